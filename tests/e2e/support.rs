//! What every end-to-end scenario needs: a namespace of its own on the shared test API server,
//! an SSM simulator, the real `ssm-operator` binary started as users run it, and waits that
//! follow a watch (never fixed sleeps).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use ssm_operator::api::{CommandInvocation, CommandInvocationSpec};
use testbed::TestCluster;

/// The operator binary under test.
pub const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_ssm-operator");
/// Default deadline for anything a scenario waits for.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// A 36-character command id SSM would accept.
pub const COMMAND_ID: &str = "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11";
/// An instance id matching SSM's pattern.
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";

static NEXT_NAMESPACE: AtomicUsize = AtomicUsize::new(0);

/// One scenario's world: its namespace on the shared cluster and a client.
pub struct World {
    /// The shared test cluster.
    pub cluster: Arc<TestCluster>,
    /// A client for this scenario's runtime.
    pub client: Client,
    /// This scenario's namespace.
    pub namespace: String,
    /// Scratch directory (operator logs).
    pub dir: tempfile::TempDir,
}

impl World {
    /// Creates a fresh namespace named after the scenario.
    pub async fn new(cluster: Arc<TestCluster>, scenario: &str) -> World {
        let client = cluster.client().await.expect("kube client");
        let n = NEXT_NAMESPACE.fetch_add(1, Ordering::SeqCst);
        let namespace = format!("{}-{n}", scenario.replace('_', "-"))
            .chars()
            .take(60)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        World {
            cluster,
            client,
            namespace,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The CommandInvocation API of this namespace.
    pub fn api(&self) -> Api<CommandInvocation> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a CommandInvocation.
    pub async fn create(&self, name: &str, spec: CommandInvocationSpec) -> CommandInvocation {
        self.api()
            .create(&PostParams::default(), &CommandInvocation::new(name, spec))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"))
    }

    /// The API of any namespaced kind in this namespace.
    pub fn api_of<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Waits until `done` holds for the named resource, following a watch.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&CommandInvocation) -> bool,
    ) -> CommandInvocation {
        self.wait_on(name, what, done).await
    }

    /// Waits until `done` holds for the named object of any namespaced kind, following a
    /// watch; on timeout the panic shows the object's last status.
    pub async fn wait_on<K>(&self, name: &str, what: &str, done: impl Fn(&K) -> bool) -> K
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let cond = move |obj: Option<&K>| obj.is_some_and(&done);
        match tokio::time::timeout(DEADLINE, await_condition(self.api_of::<K>(), name, cond)).await
        {
            Ok(Ok(Some(obj))) => obj,
            Ok(Ok(None)) => panic!("{kind} {name} was deleted while waiting for {what}"),
            Ok(Err(e)) => panic!("watching {kind} {name} for {what}: {e}"),
            Err(_) => {
                let now = self.api_of::<K>().get(name).await.ok();
                let status = now.and_then(|o| serde_json::to_value(o).ok());
                panic!(
                    "{kind} {name}: no {what} within {DEADLINE:?}; last seen status: {:#}",
                    status.map_or(Value::Null, |o| o["status"].clone())
                )
            }
        }
    }

    /// Waits until the named object of any namespaced kind is gone.
    pub async fn wait_gone<K>(&self, name: &str)
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api = self.api_of::<K>();
        poll_until(&format!("{name} to be gone"), || {
            let api = &api;
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                    .then_some(())
            }
        })
        .await;
    }

    /// Waits until SSM status `status` is reported.
    pub async fn wait_status(&self, name: &str, status: &str) -> CommandInvocation {
        self.wait_for(name, &format!("status {status}"), |o| {
            ssm_status(o) == Some(status)
        })
        .await
    }

    /// Waits until condition `type_` has status `value` (e.g. Finished=True).
    pub async fn wait_condition(&self, name: &str, type_: &str, value: &str) -> CommandInvocation {
        self.wait_for(name, &format!("{type_}={value}"), |o| {
            o.condition(type_).is_some_and(|c| c.status == value)
        })
        .await
    }

    /// Event reasons recorded for the resource, oldest first.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let list = api
            .list(&ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .expect("list events");
        let mut events: Vec<_> = list.items;
        events.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
        events.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Runs kubectl against the cluster in this namespace and returns stdout.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        let out = self
            .cluster
            .kubectl()
            .args(["-n", &self.namespace])
            .args(args)
            .output()
            .await
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The SSM status a resource reports.
pub fn ssm_status(obj: &CommandInvocation) -> Option<&str> {
    obj.status.as_ref().and_then(|s| s.status.as_deref())
}

/// A spec for the default command and instance.
pub fn spec(plugin: Option<&str>) -> CommandInvocationSpec {
    CommandInvocationSpec {
        ttl_seconds_after_finished: None,
        command_id: COMMAND_ID.into(),
        instance_id: INSTANCE_ID.into(),
        plugin_name: plugin.map(str::to_string),
        region: None,
    }
}

/// A free loopback port (released again; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Options for one operator process.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// `AWS_ENDPOINT_URL_SSM`.
    pub ssm_endpoint: String,
    /// Extra flags.
    pub args: Vec<String>,
    /// Extra environment variables, set last (they may override the defaults above).
    pub env: Vec<(String, String)>,
}

/// A running `ssm-operator run` process; killed on drop, its log printed if the test failed.
pub struct Operator {
    child: Option<Child>,
    log: PathBuf,
    /// Where /metrics is served.
    pub http: String,
}

impl Operator {
    /// Starts the operator watching the world's namespace with fast test intervals (polls
    /// every 100 ms to 1 s, progress shown after 500 ms).
    pub fn start(world: &World, options: &OperatorOptions) -> Operator {
        Operator::start_polling(world, options, "100ms", "1s")
    }

    /// [`Operator::start`] with `--send-commands` (and `extra` flags), against `ssm_endpoint`.
    pub fn sending(world: &World, ssm_endpoint: &str, extra: &[&str]) -> Operator {
        let args = std::iter::once("--send-commands")
            .chain(extra.iter().copied())
            .map(str::to_string)
            .collect();
        Operator::start(
            world,
            &OperatorOptions {
                ssm_endpoint: ssm_endpoint.to_string(),
                args,
                ..OperatorOptions::default()
            },
        )
    }

    /// Sends SIGTERM and asserts a clean exit (code 0) within the deadline.
    pub async fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "-TERM");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!(
                    "the operator did not exit within {DEADLINE:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            status.code(),
            Some(0),
            "operator exit after SIGTERM; log:\n{}",
            self.log_tail()
        );
    }

    /// Kills the process at once (SIGKILL), as a crash or node loss would.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The operator's whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the operator's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Reads /metrics once the server answers.
    pub async fn metrics(&self) -> String {
        self.metrics_containing("").await
    }

    /// Reads /metrics once it contains `needle` (e.g. after the caches synced).
    pub async fn metrics_containing(&self, needle: &str) -> String {
        self.http_get_containing("metrics", needle).await
    }

    /// GETs `/{path}` from the operator's HTTP endpoint until it answers 2xx with a body
    /// containing `needle`, and returns that body.
    pub async fn http_get_containing(&self, path: &str, needle: &str) -> String {
        let url = format!("{}/{path}", self.http);
        let what = format!("{url} to show {needle:?}");
        poll_until(&what, || async {
            let out = tokio::process::Command::new("curl")
                .args(["-sf", &url])
                .output()
                .await
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.contains(needle)).then_some(text)
        })
        .await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- operator log ({}) ---\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
        }
    }
}

/// Sends `which` (e.g. `-STOP`) to `pid` with kill(1).
pub fn signal(pid: u32, which: &str) {
    let status = StdCommand::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Polls `probe` every 50 ms until it yields a value or the deadline passes.
pub async fn poll_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches nothing change for `window`: used to show the absence of SSM calls, never to wait
/// for something to happen.
pub async fn observe_quietly(window: Duration) {
    tokio::time::sleep(window).await;
}

/// The `kubectl get -o json` view of a resource.
pub async fn get_json(world: &World, name: &str) -> Value {
    serde_json::from_str(&world.kubectl(&["get", "cinv", name, "-o", "json"]).await)
        .expect("kubectl json")
}

impl Operator {
    /// The exit status if the process has exited (it is reaped then), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Operator {
    /// The process id (for signals such as SIGSTOP and SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("operator process").id()
    }
}

impl Operator {
    /// Kills the process at once (SIGKILL) like [`Operator::kill`], and returns its whole log.
    pub fn kill_and_log(self) -> String {
        let log = self.log.clone();
        self.kill();
        std::fs::read_to_string(log).unwrap_or_default()
    }
}

impl Operator {
    /// Starts the operator like [`Operator::start`], but polling between `min` and `max`
    /// (e.g. `"10s"`, `"30s"`) instead of the fast test intervals: clap refuses a repeated
    /// `--poll-interval-min`, so the flags cannot simply be given again in `options.args`.
    pub fn start_polling(
        world: &World,
        options: &OperatorOptions,
        min: &str,
        max: &str,
    ) -> Operator {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let log = world.dir.path().join(format!("operator-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let port = free_port();
        let child = StdCommand::new(OPERATOR_BIN)
            .arg("run")
            .args(["--namespace", &world.namespace])
            .args(["--poll-interval-min", min, "--poll-interval-max", max])
            .args(["--http-bind", &format!("127.0.0.1:{port}")])
            .args(&options.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", world.cluster.kubeconfig_path())
            .env("AWS_ENDPOINT_URL_SSM", &options.ssm_endpoint)
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info,ssm_operator=debug")
            // Progress shows after 500 ms, not 10 s: time runs 20× faster here, as for the
            // poll intervals.
            .env("SSM_OPERATOR_PROGRESS_AFTER", "500ms")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start ssm-operator");
        Operator {
            child: Some(child),
            log,
            http: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// The identity holding the Lease `name`, if any.
pub async fn lease_holder(
    leases: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .expect("get Lease")?
        .spec?
        .holder_identity
}

/// An operator electing a leader on the Lease `lease` in the world's namespace, known as
/// `identity` (the pod name the chart's downward API would give it).
pub fn leader_elected(
    world: &World,
    ssm_endpoint: &str,
    identity: &str,
    lease: &str,
    duration: Duration,
) -> Operator {
    let args = [
        "--leader-elect",
        "--lease-namespace",
        &world.namespace,
        "--lease-name",
        lease,
        "--lease-duration",
        &format!("{}s", duration.as_secs()),
    ];
    Operator::start(
        world,
        &OperatorOptions {
            ssm_endpoint: ssm_endpoint.to_string(),
            args: args.map(String::from).to_vec(),
            env: vec![("POD_NAME".into(), identity.into())],
        },
    )
}

/// Waits until `operator`'s log shows `needle`.
pub async fn wait_log(operator: &Operator, who: &str, needle: &str) {
    poll_until(&format!("{who}'s log to show {needle:?}"), || async {
        operator.log().contains(needle).then_some(())
    })
    .await;
}

/// Two operators racing for the Lease `lease`: waits until one leads and the other stands by,
/// and returns `(leader, follower, leader's identity, follower's identity)`.
pub async fn leader_and_follower(
    world: &World,
    ssm_endpoint: &str,
    lease: &str,
    duration: Duration,
) -> (Operator, Operator, &'static str, &'static str) {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(world.client.clone(), &world.namespace);
    let a = leader_elected(world, ssm_endpoint, "operator-a", lease, duration);
    let b = leader_elected(world, ssm_endpoint, "operator-b", lease, duration);
    let holder = poll_until("a Lease holder", || lease_holder(&leases, lease)).await;
    let (leader, follower, leader_id, follower_id) = match holder.as_str() {
        "operator-a" => (a, b, "operator-a", "operator-b"),
        "operator-b" => (b, a, "operator-b", "operator-a"),
        other => panic!("Lease held by {other:?}, neither operator-a nor operator-b"),
    };
    wait_log(&leader, leader_id, "leading: starting controllers").await;
    wait_log(&follower, follower_id, "waiting for leadership").await;
    (leader, follower, leader_id, follower_id)
}
