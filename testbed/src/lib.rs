//! A real etcd + kube-apiserver on loopback, envtest style, for end-to-end tests, the demo
//! and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), testbed::Error> {
//! let cluster = testbed::TestCluster::start().await?; // binaries from $KUBEBUILDER_ASSETS
//! let client = cluster.client().await?;
//! let status = cluster.kubectl().args(["get", "ns"]).status().await;
//! # let _ = (client, status);
//! # Ok(()) }
//! ```
//!
//! Each cluster gets its own temporary directory (certificates, etcd data, logs, kubeconfig)
//! and three free ports, so clusters can run side by side, also from several test binaries at
//! once. Besides the API server, kube-controller-manager runs (when the assets directory has
//! it, as `hack/envtest-assets.sh` builds it) with only Kubernetes' garbage collector and
//! namespace controller, so owner references and namespace deletion behave as in a real
//! cluster; it serves nothing (no ports). There is no scheduler or kubelet.
//!
//! Dropping the [`TestCluster`] kills the processes and removes the directory; set
//! `TESTBED_KEEP=1` to keep it (its path is printed to stderr). The processes are also killed
//! if the test process dies without dropping it (see the `process` module for how).
//!
//! For fault tests, [`TestCluster::stop_apiserver`] and [`TestCluster::start_apiserver`] take
//! kube-apiserver down and bring it back on the same port with the same etcd, certificates and
//! token, so kubeconfigs and clients made before the outage work again afterwards.
//!
//! The library prints nothing to stdout; it writes to stderr only when something fails.

#![warn(missing_docs)]

mod assets;
mod credentials;
mod error;
mod kubeconfig;
mod ports;
mod process;
mod ready;
mod workdir;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::assets::Assets;
use crate::credentials::{Credentials, ADMIN_USER};
use crate::ports::Ports;
use crate::process::ManagedProcess;
use crate::workdir::Workdir;

pub use crate::assets::ASSETS_ENV;
pub use crate::error::Error;
pub use crate::kubeconfig::USER_AGENT;
pub use crate::ready::SYSTEM_NAMESPACES;
pub use crate::workdir::KEEP_ENV;

/// How long one start attempt may take, from creating the directory to a ready apiserver.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Start attempts in total: the first plus up to three retries with new ports when a port was
/// taken by another process between choosing and binding it.
const MAX_ATTEMPTS: u32 = 4;

/// A running etcd + kube-apiserver pair with its own temporary directory.
///
/// Dropping it kills kube-apiserver, then etcd (SIGKILL), waits for both, and removes the
/// directory unless `TESTBED_KEEP=1` is set.
#[derive(Debug)]
pub struct TestCluster {
    // Behind async locks so that a shared cluster (`Arc<TestCluster>`) can restart its
    // apiserver; the readiness wait holds both across awaits.
    apiserver: Mutex<ManagedProcess>,
    etcd: Mutex<ManagedProcess>,
    /// kube-controller-manager (garbage collector, namespace controller), if the assets have it.
    controller_manager: Option<ManagedProcess>,
    /// The apiserver's pid, 0 while it is stopped (readable without the lock).
    apiserver_pid: AtomicU32,
    etcd_pid: u32,
    /// etcd's client URL, `http://127.0.0.1:<port>` (it also serves `/metrics`).
    etcd_url: String,
    /// The flags the apiserver was started with: a restart reuses them (same port, etcd,
    /// certificates, token file).
    apiserver_args: Vec<String>,
    assets: Assets,
    server_url: String,
    kubeconfig: PathBuf,
    // Last, so it is removed after the processes are gone.
    workdir: Workdir,
}

impl TestCluster {
    /// Starts a cluster with the binaries in the directory named by `KUBEBUILDER_ASSETS`
    /// (the controller-runtime convention). Fails with an error that names
    /// `hack/envtest-assets.sh` when the variable is unset or the directory is incomplete.
    pub async fn start() -> Result<TestCluster, Error> {
        TestCluster::launch(Assets::from_env()?, &[]).await
    }

    /// Like [`start`](Self::start), with `flags` added to kube-apiserver's (e.g. a shorter
    /// `--event-ttl` for a run that must reach the steady state of Events within minutes).
    pub async fn start_with_apiserver_flags(flags: &[&str]) -> Result<TestCluster, Error> {
        TestCluster::launch(Assets::from_env()?, flags).await
    }

    /// Starts a cluster with the binaries in `assets` (`kube-apiserver`, `etcd`, `kubectl`,
    /// optionally `helm`).
    pub async fn start_with_assets(assets: &Path) -> Result<TestCluster, Error> {
        TestCluster::launch(Assets::at(assets)?, &[]).await
    }

    /// Runs start attempts until one succeeds, retrying only port conflicts.
    async fn launch(assets: Assets, flags: &[&str]) -> Result<TestCluster, Error> {
        let mut attempt = 1;
        loop {
            match TestCluster::try_start(assets.clone(), flags).await {
                Err(e) if e.is_port_conflict() && attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    eprintln!(
                        "testbed: a port was taken meanwhile, retrying with new ports \
                         (attempt {attempt} of {MAX_ATTEMPTS})"
                    );
                }
                result => return result,
            }
        }
    }

    /// One start attempt in a fresh directory with fresh ports.
    ///
    /// On error (or if the future is dropped) the locals drop in reverse order: the
    /// processes are killed before the directory is removed.
    async fn try_start(assets: Assets, flags: &[&str]) -> Result<TestCluster, Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        let workdir = Workdir::create()?;
        let ports = Ports::pick()?;

        let mut etcd = ManagedProcess::spawn(
            "etcd",
            &assets.etcd(),
            &etcd_args(&workdir, ports),
            &workdir.etcd_log(),
        )
        .await?;
        // etcd boots while openssl makes the key.
        let credentials = Credentials::create(&workdir.certs_dir()).await?;
        ready::wait_for_etcd(&mut etcd, ports.etcd_client, deadline).await?;

        let mut apiserver_args = apiserver_args(&workdir, ports, &credentials);
        apiserver_args.extend(flags.iter().map(|f| f.to_string()));
        let mut apiserver = ManagedProcess::spawn(
            "kube-apiserver",
            &assets.kube_apiserver(),
            &apiserver_args,
            &workdir.apiserver_log(),
        )
        .await?;
        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let kubeconfig = workdir.kubeconfig();
        kubeconfig::write(
            &kubeconfig,
            &server_url,
            &workdir.certs_dir().join("apiserver.crt"),
            ADMIN_USER,
            &credentials.token,
        )?;
        ready::wait_for_apiserver(&mut apiserver, &mut etcd, &kubeconfig, deadline).await?;
        let controller_manager = match assets.kube_controller_manager() {
            Some(binary) => Some(
                ManagedProcess::spawn(
                    "kube-controller-manager",
                    &binary,
                    &controller_manager_args(&kubeconfig),
                    &workdir.controller_manager_log(),
                )
                .await?,
            ),
            None => None,
        };

        Ok(TestCluster {
            controller_manager,
            apiserver_pid: AtomicU32::new(apiserver.id()),
            etcd_pid: etcd.id(),
            etcd_url: format!("http://127.0.0.1:{}", ports.etcd_client),
            apiserver: Mutex::new(apiserver),
            etcd: Mutex::new(etcd),
            apiserver_args,
            assets,
            server_url,
            kubeconfig,
            workdir,
        })
    }

    /// The kubeconfig file: bearer-token auth as a member of `system:masters`, TLS verified
    /// against the apiserver's self-signed certificate.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new client from [`kubeconfig_path`](Self::kubeconfig_path), sending the User-Agent
    /// [`USER_AGENT`].
    pub async fn client(&self) -> Result<kube::Client, Error> {
        kubeconfig::client(&self.kubeconfig).await
    }

    /// The directory the binaries come from.
    pub fn assets_dir(&self) -> &Path {
        self.assets.dir()
    }

    /// A command running the assets' `kubectl` with `KUBECONFIG` set to this cluster (and
    /// `kill_on_drop`); add arguments and run it.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.assets.kubectl());
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .kill_on_drop(true);
        command
    }

    /// A command running `helm` (from the assets directory if it has one, else from `PATH`)
    /// with `KUBECONFIG` set to this cluster, `kill_on_drop`, and `HELM_CACHE_HOME`,
    /// `HELM_CONFIG_HOME` and `HELM_DATA_HOME` inside the cluster's temporary directory.
    pub fn helm(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.assets.helm());
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.workdir.helm_cache())
            .env("HELM_CONFIG_HOME", self.workdir.helm_config())
            .env("HELM_DATA_HOME", self.workdir.helm_data())
            .kill_on_drop(true);
        command
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The directory holding `etcd.log` and `apiserver.log` (the cluster's temporary
    /// directory).
    pub fn log_dir(&self) -> &Path {
        self.workdir.root()
    }

    /// The process id of kube-controller-manager, if it runs.
    pub fn controller_manager_pid(&self) -> Option<u32> {
        self.controller_manager.as_ref().map(ManagedProcess::id)
    }

    /// Whether kube-controller-manager runs (garbage collector and namespace controller): the
    /// assets directory has it. Its log is `controller-manager.log` in [`log_dir`](Self::log_dir).
    pub fn has_controller_manager(&self) -> bool {
        self.controller_manager.is_some()
    }

    /// etcd's client URL, `http://127.0.0.1:<port>` (plain HTTP; it also serves `/metrics`
    /// and etcd's JSON gateway, e.g. `/v3/kv/compaction`).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The process id of etcd.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd_pid
    }

    /// The process id of kube-apiserver; 0 while it is stopped
    /// ([`stop_apiserver`](Self::stop_apiserver)).
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver_pid.load(Ordering::SeqCst)
    }

    /// Kills kube-apiserver (SIGKILL, as a crash or a lost control-plane node would) and waits
    /// for it to be gone; etcd keeps running. From then on connections to
    /// [`server_url`](Self::server_url) are refused until
    /// [`start_apiserver`](Self::start_apiserver). Does nothing if it is already stopped.
    pub async fn stop_apiserver(&self) {
        let mut apiserver = self.apiserver.lock().await;
        apiserver.stop();
        self.apiserver_pid.store(0, Ordering::SeqCst);
    }

    /// Starts kube-apiserver again after [`stop_apiserver`](Self::stop_apiserver), with the
    /// same flags: the same port, etcd (so every object is still there), serving certificate
    /// and token, so the kubeconfig and existing clients stay valid. Returns once `/readyz`
    /// answers `ok` and the system namespaces are listed, within [`START_TIMEOUT`]. Its output
    /// is appended to the same `apiserver.log`. Does nothing if it is running.
    ///
    /// The port cannot change, so there is no retry: if another process took it during the
    /// outage, this fails with [`Error::ProcessExited`] and a log tail saying the address is
    /// already in use.
    pub async fn start_apiserver(&self) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut apiserver = self.apiserver.lock().await;
        if apiserver.id() != 0
            && apiserver
                .check_running("checking it before a restart")
                .is_ok()
        {
            return Ok(());
        }
        let log = self.workdir.apiserver_log();
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(&log) {
            let _ = writeln!(file, "--- testbed: starting kube-apiserver again ---");
        }
        let mut restarted = ManagedProcess::spawn(
            "kube-apiserver",
            &self.assets.kube_apiserver(),
            &self.apiserver_args,
            &log,
        )
        .await?;
        let mut etcd = self.etcd.lock().await;
        // On error `restarted` is dropped, which kills it; the cluster stays stopped.
        ready::wait_for_apiserver(&mut restarted, &mut etcd, &self.kubeconfig, deadline).await?;
        self.apiserver_pid.store(restarted.id(), Ordering::SeqCst);
        *apiserver = restarted;
        Ok(())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Its clients first, so they do not log connection errors on the way down.
        if let Some(controller_manager) = self.controller_manager.as_mut() {
            controller_manager.stop();
        }
        self.apiserver.get_mut().stop();
        self.etcd.get_mut().stop();
        // The fields drop next; the directory (last field) goes last.
    }
}

/// etcd's flags: a one-member cluster on loopback with its data in the work directory.
fn etcd_args(workdir: &Workdir, ports: Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        "--name=testbed".into(),
        format!("--data-dir={}", workdir.etcd_data().display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=testbed={peer}"),
    ]
}

/// kube-apiserver's flags: HTTPS on loopback with a self-signed certificate written to
/// `certs/`, static-token authentication, RBAC, and no ServiceAccount admission (there is no
/// token controller to make the default service accounts).
fn apiserver_args(workdir: &Workdir, ports: Ports, credentials: &Credentials) -> Vec<String> {
    let sa_key = credentials.sa_key.display();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        format!("--cert-dir={}", workdir.certs_dir().display()),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.apiserver),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={sa_key}"),
        format!("--service-account-signing-key-file={sa_key}"),
        format!("--token-auth-file={}", credentials.token_file.display()),
        "--authorization-mode=RBAC".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        "--allow-privileged=true".into(),
    ]
}

/// kube-controller-manager's flags: only the garbage collector and the namespace controller,
/// as the kubeconfig's admin (no service-account credentials: there is no token controller),
/// no leader election, and nothing served (no insecure port, no secure port), so clusters
/// side by side never share a port.
fn controller_manager_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--controllers=garbagecollector,namespace".into(),
        "--use-service-account-credentials=false".into(),
        "--leader-elect=false".into(),
        "--port=0".into(),
        "--secure-port=0".into(),
        "--kube-api-qps=200".into(),
        "--kube-api-burst=400".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An assets directory whose `etcd` is a script that counts its runs in `runs` and fails
    /// with `message`; the other binaries are never reached.
    fn fake_assets(message: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let etcd = dir.path().join("etcd");
        let script = format!(
            "#!/bin/sh\necho run >> \"$(dirname \"$0\")/runs\"\necho 'starting'\necho '{message}' >&2\nexit 1\n"
        );
        std::fs::write(&etcd, script).unwrap();
        std::fs::set_permissions(&etcd, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["kube-apiserver", "kubectl"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        dir
    }

    fn runs(dir: &tempfile::TempDir) -> usize {
        std::fs::read_to_string(dir.path().join("runs"))
            .unwrap()
            .lines()
            .count()
    }

    #[tokio::test]
    async fn port_conflicts_are_retried_with_new_ports() {
        let assets = fake_assets("listen tcp 127.0.0.1:2379: bind: address already in use");
        let err = TestCluster::start_with_assets(assets.path())
            .await
            .unwrap_err();
        assert_eq!(runs(&assets), MAX_ATTEMPTS as usize);
        assert!(err.is_port_conflict(), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("etcd exited while waiting for etcd"),
            "{text}"
        );
        assert!(text.contains("starting\nlisten tcp"), "{text}");
    }

    #[tokio::test]
    async fn other_start_failures_are_not_retried() {
        let assets = fake_assets("etcdmain: cannot access data directory");
        let err = TestCluster::start_with_assets(assets.path())
            .await
            .unwrap_err();
        assert_eq!(runs(&assets), 1);
        assert!(
            matches!(&err, Error::ProcessExited { process: "etcd", tail, .. }
                if tail.contains("cannot access data directory")),
            "{err}"
        );
    }

    #[test]
    fn cluster_and_start_future_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<TestCluster>();
        send_sync::<Error>();
        // Built, never polled: only the type matters.
        send(&TestCluster::start());
    }
}
