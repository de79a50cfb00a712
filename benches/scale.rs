//! `make bench`: how the operator copes with many CommandInvocations at once.
//!
//! One run starts a real etcd + kube-apiserver (`testbed`, binaries from `KUBEBUILDER_ASSETS`),
//! installs the shipped CRD, starts the SSM simulator in this process and the real
//! `ssm-operator` binary as a subprocess (`--poll-interval-min 500ms --poll-interval-max 5s`).
//! The simulator gets ONE command with N invocations (`BENCH_INVOCATIONS`, default 1000): each
//! is InProgress at 1 s and Success at a time spread evenly over 3 s ..< 8 s by index. The
//! bench then creates the N CommandInvocations (32 at a time) and follows a watch until every
//! one shows `Finished=True` (deadline 180 s from the first create).
//!
//! It prints figures, never a verdict on speed:
//! - creation time, time from the first create to all Finished, and when 50 / 90 / 100 % were
//!   Finished next to when 50 / 90 / 100 % were simulated complete;
//! - lag per invocation = seen Finished − max(simulated Success, its create returned), p50 /
//!   p90 / max (a resource created after its Success cannot be seen earlier than its create);
//! - GetCommandInvocation calls (counted by the simulator), in all and per invocation;
//! - status writes, reconciles, reconcile errors and mean reconcile duration from the
//!   operator's `/metrics`, its peak RSS (`VmHWM`), and the CPU time of the operator,
//!   kube-apiserver, etcd and this process (everything shares the machine's cores);
//! - GetCommandInvocation calls and status writes in a 5 s window after all were Finished
//!   (expected 0: finished resources are never polled again).
//!
//! Then the operator gets SIGTERM and must exit 0. The bench exits 1 only when something broke
//! (set-up failed, the deadline passed, a bad exit), after printing what was missing.
//!
//! ```console
//! $ make bench                                            # N = 1000
//! $ BENCH_INVOCATIONS=200 make bench
//! $ BENCH_OPERATOR_LOG=/tmp/op.log RUST_LOG=info,ssm_operator=debug make bench   # keep the log
//! ```
//!
//! The last line sums it up: `bench scale: N=1000 all finished in 12.0 s, 2.6
//! GetCommandInvocation calls per invocation, 0 calls after finish`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command as StdCommand, ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use ssm_operator::api::{CommandInvocation, CommandInvocationSpec};
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;
use tokio::sync::{mpsc, oneshot};

/// The operator binary, built by cargo for this bench.
const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_ssm-operator");
const NAMESPACE: &str = "bench-scale";
const COMMAND_ID: &str = "5e3f1a2b-7c4d-4e8f-9a0b-1c2d3e4f5a6b";
const PLUGIN: &str = "aws:runShellScript";
const DEFAULT_INVOCATIONS: usize = 1000;
/// Creates in flight at once.
const CREATE_CONCURRENCY: usize = 32;
/// From the first create until every resource must be Finished.
const DEADLINE: Duration = Duration::from_secs(180);
/// Watched after all are Finished, for SSM calls that should not happen.
const QUIET_WINDOW: Duration = Duration::from_secs(5);
/// Status writes after all Finished are counted from this long after it.
const WRITE_SETTLE: Duration = Duration::from_millis(250);
const IN_PROGRESS_AT: Duration = Duration::from_secs(1);
const SUCCESS_FROM_MS: u64 = 3_000;
const SUCCESS_SPREAD_MS: u64 = 5_000;

fn main() -> ExitCode {
    ssm_operator::install_crypto_provider();
    let n = match std::env::var("BENCH_INVOCATIONS") {
        Err(_) => DEFAULT_INVOCATIONS,
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!(
                    "bench scale: BENCH_INVOCATIONS must be a positive integer, got {text:?}"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(n)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench scale: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(n: usize) -> Result<(), String> {
    println!("bench scale: N={n}, setting up (API server, CRD, simulator, operator)");
    let cluster = TestCluster::start()
        .await
        .map_err(|e| format!("cannot start the test API server: {e}"))?;
    install_crd(&cluster).await?;
    let client = cluster.client().await.map_err(|e| e.to_string())?;
    create_namespace(&client).await?;
    let api: Api<CommandInvocation> = Api::namespaced(client.clone(), NAMESPACE);

    let sim = Simulator::start().await.map_err(|e| e.to_string())?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut operator = Operator::start(&cluster, &sim.endpoint(), scratch.path())?;
    operator.wait_ready().await?;

    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
    let (synced_tx, synced_rx) = oneshot::channel();
    let watch = tokio::spawn(watch_finished(api.clone(), finished_tx, synced_tx));
    synced_rx
        .await
        .map_err(|_| "the bench's watch ended before it synced".to_string())?;

    // The simulated timelines start here.
    let instances: Vec<String> = (0..n).map(instance_id).collect();
    let success_at: Vec<Duration> = (0..n).map(|i| success_offset(i, n)).collect();
    let mut command = Command::new(COMMAND_ID).comment("bench scale");
    for (instance, at) in instances.iter().zip(&success_at) {
        command = command.invocation(
            Invocation::new(instance).plugin(
                Plugin::new(PLUGIN)
                    .step(IN_PROGRESS_AT, Status::InProgress)
                    .step(*at, Status::Success)
                    .stdout(format!("patched {instance}\n")),
            ),
        );
    }
    sim.add_command(command);
    let sim_start = Instant::now();

    // Create all resources, CREATE_CONCURRENCY at a time.
    let processes = [
        ("operator", operator.pid()),
        ("kube-apiserver", Some(cluster.apiserver_pid())),
        ("etcd", Some(cluster.etcd_pid())),
        (
            "bench (simulator, watch, creates)",
            Some(std::process::id()),
        ),
    ];
    let cpu_before = processes.map(|(_, pid)| pid.and_then(cpu_seconds));
    let first_create = Instant::now();
    let created: Vec<(usize, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let spec = CommandInvocationSpec {
                command_id: COMMAND_ID.into(),
                instance_id: instances[i].clone(),
                plugin_name: None,
                region: None,
            };
            async move {
                api.create(
                    &PostParams::default(),
                    &CommandInvocation::new(&name(i), spec),
                )
                .await
                .map(|_| (i, Instant::now()))
                .map_err(|e| format!("create {}: {e}", name(i)))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    let creation = first_create.elapsed();
    let mut created_at = vec![first_create; n];
    for (i, at) in created {
        created_at[i] = at;
    }

    // Follow the watch until every resource is Finished.
    let deadline = tokio::time::Instant::from_std(first_create + DEADLINE);
    let mut finished: HashMap<String, Instant> = HashMap::with_capacity(n);
    while finished.len() < n {
        match tokio::time::timeout_at(deadline, finished_rx.recv()).await {
            Ok(Some((name, at))) => {
                finished.entry(name).or_insert(at);
            }
            Ok(None) => return Err("the bench's watch ended".into()),
            Err(_) => {
                watch.abort();
                report_missing(&api, &finished, n, &operator).await;
                return Err(format!(
                    "only {} of {n} Finished within {DEADLINE:?} of the first create",
                    finished.len()
                ));
            }
        }
    }
    let all_finished = first_create.elapsed();
    let calls_at_finish = sim.calls("GetCommandInvocation");
    // The operator counts a status write once its patch returns, which can be just after the
    // watch delivered the change: its write counter is read a moment later.
    tokio::time::sleep(WRITE_SETTLE).await;
    let metrics_at_finish = operator.metrics()?;
    watch.abort();

    tokio::time::sleep(QUIET_WINDOW - WRITE_SETTLE).await;
    let calls_total = sim.calls("GetCommandInvocation");
    let calls_after = calls_total - calls_at_finish;
    let metrics = operator.metrics()?;
    let peak_rss = operator.peak_rss();
    let cpu = processes
        .iter()
        .zip(&cpu_before)
        .map(|((what, pid), before)| {
            let used = pid.and_then(cpu_seconds).zip(*before).map(|(a, b)| a - b);
            format!(
                "{what} {}",
                used.map_or("?".into(), |s| format!("{s:.1} s"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let reconcile_mean = metric(
        &metrics,
        "ssm_operator_reconcile_duration_seconds_sum",
        None,
    ) / metric(
        &metrics,
        "ssm_operator_reconcile_duration_seconds_count",
        None,
    );

    // Lag after the simulated completion, and the 50/90/100 % marks.
    let mut lags = Vec::with_capacity(n);
    let mut seen = Vec::with_capacity(n);
    let mut simulated = Vec::with_capacity(n);
    let mut created_late = 0;
    for i in 0..n {
        let done = finished[&name(i)];
        let success = sim_start + success_at[i];
        if created_at[i] > success {
            created_late += 1;
        }
        lags.push(done.saturating_duration_since(success.max(created_at[i])));
        seen.push(done.saturating_duration_since(first_create));
        simulated.push(success.saturating_duration_since(first_create));
    }
    lags.sort();
    seen.sort();
    simulated.sort();

    let writes = metric(&metrics, "ssm_operator_status_writes_total", None);
    let writes_after =
        writes - metric(&metrics_at_finish, "ssm_operator_status_writes_total", None);
    let reconciles = metric(&metrics, "ssm_operator_reconciles_total", None);
    let errors = metric(&metrics, "ssm_operator_reconcile_errors_total", None);
    let gci_ok = metric(
        &metrics,
        "ssm_operator_ssm_calls_total",
        Some(r#"outcome="success""#),
    );
    let gci_all = metric(&metrics, "ssm_operator_ssm_calls_total", None);
    let per = |x: f64| x / n as f64;
    let calls_per = calls_total as f64 / n as f64;

    let late = if created_late > 0 {
        format!(" ({created_late} created after their Success: lag counted from the create)")
    } else {
        String::new()
    };
    println!();
    row("invocations", n);
    row(
        format!("creation ({CREATE_CONCURRENCY} at a time)"),
        format!(
            "{:.2} s ({:.0} creates/s)",
            secs(creation),
            n as f64 / creation.as_secs_f64()
        ),
    );
    row(
        "first create -> all Finished",
        format!("{:.2} s", secs(all_finished)),
    );
    row("s since first create", "simulated complete / seen Finished");
    for pct in [50, 90, 100] {
        row(
            format!("  {pct:>3} %"),
            format!(
                "{:>8.2} / {:>8.2}",
                secs(quantile(&simulated, pct)),
                secs(quantile(&seen, pct))
            ),
        );
    }
    row(
        "lag after simulated completion",
        format!(
            "p50 {:.2} s, p90 {:.2} s, max {:.2} s{late}",
            secs(quantile(&lags, 50)),
            secs(quantile(&lags, 90)),
            secs(quantile(&lags, 100)),
        ),
    );
    row(
        "GetCommandInvocation calls",
        format!(
            "{calls_total} = {calls_per:.2} per invocation \
             (simulator; operator counted {gci_all:.0} SSM calls, {gci_ok:.0} success)"
        ),
    );
    row(
        "status writes",
        format!("{writes:.0} = {:.2} per invocation", per(writes)),
    );
    row(
        "reconciles",
        format!(
            "{reconciles:.0} = {:.2} per invocation, {errors:.0} errors",
            per(reconciles)
        ),
    );
    row(
        "mean reconcile duration",
        format!("{:.1} ms", reconcile_mean * 1000.0),
    );
    row("CPU used from first create", cpu);
    row(
        "operator peak RSS (VmHWM)",
        peak_rss.map_or("unknown".into(), |kb| {
            format!("{:.1} MiB", kb as f64 / 1024.0)
        }),
    );
    row(
        format!("{QUIET_WINDOW:?} after all Finished"),
        format!(
            "{calls_after} GetCommandInvocation calls, \
             {writes_after:.0} status writes (from +{WRITE_SETTLE:?})"
        ),
    );

    operator.stop().await?;
    drop(sim);
    drop(cluster);
    println!();
    println!(
        "bench scale: N={n} all finished in {:.1} s, {calls_per:.1} GetCommandInvocation calls per invocation, {calls_after} calls after finish",
        secs(all_finished)
    );
    Ok(())
}

/// The resource name of invocation `i`.
fn name(i: usize) -> String {
    format!("bench-{i:05}")
}

/// `i-` and 17 hex digits, unique per index.
fn instance_id(i: usize) -> String {
    format!("i-{i:017x}")
}

/// Success time of invocation `i` of `n`: evenly spread over 3 s ..< 8 s, in index order (the
/// order they are created in, roughly), so a resource normally exists before it succeeds.
fn success_offset(i: usize, n: usize) -> Duration {
    Duration::from_millis(SUCCESS_FROM_MS + SUCCESS_SPREAD_MS * i as u64 / n as u64)
}

/// One figure: label column, then the value.
fn row(label: impl std::fmt::Display, value: impl std::fmt::Display) {
    println!("{:<34}{value}", label.to_string());
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The `pct`-th percentile (nearest rank) of sorted durations.
fn quantile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Sums a metric's samples in OpenMetrics text, optionally only those whose labels contain
/// `label` (e.g. `outcome="success"`).
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                let (labels, value) = labelled.split_once('}')?;
                if label.is_some_and(|l| !labels.contains(l)) {
                    return None;
                }
                value
            } else if rest.starts_with(' ') && label.is_none() {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .fold(0.0, |sum, x| sum + x)
}

/// Sends the name and arrival time of every resource seen with `Finished=True`; signals
/// `synced` once the initial list is done.
async fn watch_finished(
    api: Api<CommandInvocation>,
    finished: mpsc::UnboundedSender<(String, Instant)>,
    synced: oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let mut stream = pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                if obj
                    .condition("Finished")
                    .is_some_and(|c| c.status == "True")
                    && finished.send((obj.name_any(), Instant::now())).is_err()
                {
                    return;
                }
            }
            Ok(Event::InitDone) => {
                if let Some(synced) = synced.take() {
                    let _ = synced.send(());
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("bench scale: watch error (retrying): {e}"),
        }
    }
}

/// After the deadline: which resources never finished and what they last showed.
async fn report_missing(
    api: &Api<CommandInvocation>,
    finished: &HashMap<String, Instant>,
    n: usize,
    operator: &Operator,
) {
    let missing: Vec<String> = (0..n)
        .map(name)
        .filter(|m| !finished.contains_key(m))
        .collect();
    eprintln!("bench scale: {} not Finished, e.g.:", missing.len());
    for m in missing.iter().take(10) {
        let shown = match api.get(m).await {
            Ok(obj) => {
                let status = obj.status.as_ref();
                format!(
                    "status {:?}, conditions {:?}",
                    status.and_then(|s| s.status.clone()),
                    status.map(|s| {
                        s.conditions
                            .iter()
                            .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
                            .collect::<Vec<_>>()
                    })
                )
            }
            Err(e) => format!("cannot get: {e}"),
        };
        eprintln!("  {m}: {shown}");
    }
    eprintln!("--- operator log (tail) ---\n{}", operator.log_tail());
}

/// Installs the shipped CRD with kubectl and waits until it is served (as the e2e suite does).
async fn install_crd(cluster: &TestCluster) -> Result<(), String> {
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/commandinvocation.yaml");
    for args in [
        vec!["apply", "-f", crd.to_str().unwrap_or_default()],
        vec![
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/commandinvocations.ssm.operator.dev",
        ],
    ] {
        let out = cluster
            .kubectl()
            .args(&args)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

async fn create_namespace(client: &Client) -> Result<(), String> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map(|_| ())
        .map_err(|e| format!("create namespace: {e}"))
}

/// The `ssm-operator run` subprocess; killed on drop.
struct Operator {
    child: Option<Child>,
    log: PathBuf,
    http: SocketAddr,
}

impl Operator {
    fn start(cluster: &TestCluster, ssm_endpoint: &str, dir: &Path) -> Result<Operator, String> {
        let log = std::env::var_os("BENCH_OPERATOR_LOG")
            .map_or_else(|| dir.join("operator.log"), PathBuf::from);
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let stderr = file.try_clone().map_err(|e| e.to_string())?;
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?;
        let child = StdCommand::new(OPERATOR_BIN)
            .arg("run")
            .args(["--namespace", NAMESPACE])
            .args(["--poll-interval-min", "500ms", "--poll-interval-max", "5s"])
            .args(["--http-bind", &http.to_string()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("AWS_ENDPOINT_URL_SSM", ssm_endpoint)
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {OPERATOR_BIN}: {e}"))?;
        Ok(Operator {
            child: Some(child),
            log,
            http,
        })
    }

    /// Waits until `/readyz` answers 200 (caches synced).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if matches!(http_get(self.http, "readyz"), Some((200, _))) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "the operator exited at start-up ({status}); log:\n{}",
                        self.log_tail()
                    ));
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "the operator was not ready within 60 s; log:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn metrics(&self) -> Result<String, String> {
        match http_get(self.http, "metrics") {
            Some((200, body)) => Ok(body),
            other => Err(format!("GET /metrics: {other:?}")),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `VmHWM` of the process in KiB.
    fn peak_rss(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then expects exit code 0 within 30 s.
    async fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sent = StdCommand::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !sent.success() {
            return Err("kill -TERM failed".into());
        }
        let asked = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                row(
                    "operator exit after SIGTERM",
                    format!("{status} in {:.2} s", secs(asked.elapsed())),
                );
                return if status.code() == Some(0) {
                    Ok(())
                } else {
                    Err(format!(
                        "operator exited {status}; log:\n{}",
                        self.log_tail()
                    ))
                };
            }
            if asked.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "operator still running 30 s after SIGTERM; log:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// User + system CPU seconds a process has used (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let per_second = StdCommand::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    Some(ticks / per_second)
}

/// A plain HTTP/1.0 GET on loopback: status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
