//! Waiting for etcd and kube-apiserver to become usable.
//!
//! Both waits poll at short intervals until a deadline, and on every round check that the
//! processes are still running, so a crash (say, a port taken by someone else) fails fast
//! with the log tail instead of running into the deadline.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use crate::kubeconfig;
use crate::process::{log_tail, ManagedProcess};
use crate::Error;

/// Pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound for one poll, so that a hanging connection cannot eat the deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Namespaces the apiserver creates itself; start-up waits for them so tests can use them.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Polls `probe` until it succeeds, `processes` exit, or `deadline` passes. The error of
/// the last failed probe goes into the timeout error, with the tail of `log`.
async fn poll<T, F, Fut>(
    step: &str,
    deadline: Instant,
    started: Instant,
    processes: &mut [&mut ManagedProcess],
    log: &Path,
    mut probe: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last_error = String::from("not polled yet");
    loop {
        for process in processes.iter_mut() {
            process.check_running(step)?;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::Timeout {
                step: step.to_string(),
                waited: started.elapsed(),
                last_error,
                log: log.to_path_buf(),
                tail: log_tail(log),
            });
        }
        match tokio::time::timeout(remaining.min(PROBE_TIMEOUT), probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = "probe timed out".to_string(),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until etcd accepts TCP connections on its client port.
pub(crate) async fn wait_for_etcd(
    etcd: &mut ManagedProcess,
    port: u16,
    deadline: Instant,
) -> Result<(), Error> {
    let log = etcd.log().to_path_buf();
    poll(
        "waiting for etcd to accept connections",
        deadline,
        Instant::now(),
        &mut [etcd],
        &log,
        || async move {
            tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await
}

/// Waits until `/readyz` answers `ok` and the system namespaces exist, and returns the client
/// that saw it, built from `kubeconfig_path` in that same round.
pub(crate) async fn wait_for_apiserver(
    apiserver: &mut ManagedProcess,
    etcd: &mut ManagedProcess,
    kubeconfig_path: &Path,
    deadline: Instant,
) -> Result<kube::Client, Error> {
    let log = apiserver.log().to_path_buf();
    poll(
        "waiting for kube-apiserver /readyz and the system namespaces",
        deadline,
        Instant::now(),
        &mut [&mut *apiserver, &mut *etcd],
        &log,
        // A fresh client each round: the apiserver creates certs/apiserver.crt before it
        // writes it, and a client made from a half-written file would trust nothing, for good.
        || async { probe_ready(kubeconfig_path).await },
    )
    .await
}

/// One readiness probe with a client made from `kubeconfig_path` now: `/readyz` says `ok`,
/// then all [`SYSTEM_NAMESPACES`] are listed. Answers that client.
async fn probe_ready(kubeconfig_path: &Path) -> Result<kube::Client, String> {
    let client = kubeconfig::client(kubeconfig_path)
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let body = client
        .request_text(request)
        .await
        .map_err(|e| format!("GET /readyz: {e}"))?;
    if body.trim() != "ok" {
        return Err(format!("GET /readyz answered {body:?}"));
    }
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing namespaces: {e}"))?;
    let names: Vec<String> = namespaces
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    match SYSTEM_NAMESPACES
        .iter()
        .find(|wanted| !names.iter().any(|name| name == *wanted))
    {
        Some(missing) => Err(format!("namespace {missing} does not exist yet")),
        None => Ok(client),
    }
}
