//! The `Command` variants of `make bench` (issue 18): one `Command` whose targets resolve to a
//! fleet, sent by the operator itself (`--send-commands`, otherwise its default flags).
//!
//! The workload (sizes from the environment):
//! - one `Command` (document `AWS-RunShellScript`, targets `tag:Fleet=bench`) created once the
//!   operator is ready; SSM resolves its targets to `BENCH_NODES` nodes (default 5,000), node
//!   k listed `k / (N − 1) × BENCH_LISTED_OVER` (default `30s`) after the send (evenly
//!   spread);
//! - each node runs for a time drawn with a seeded RNG (`BENCH_SEED`, default 1) in
//!   [`BENCH_RUN_MIN`, `BENCH_RUN_MAX`] (default 3 s to 5 s) after it is listed, InProgress
//!   within its first half second; every tenth node (k = 9, 19, ...) fails with exit code 1;
//! - `command-two-step`: the same with a two-step document (`bench-two-step`): every node runs
//!   step `first`, then step `second` (each half of its run); every tenth node's second step
//!   fails (exit code 1). The children name no step, so each mirrors its node's invocation as
//!   a whole (status of the invocation, code and step name of the deciding step, `steps`).
//!
//! One run: a fresh API server (both CRDs) and simulator; the bench's watches of the
//! `CommandInvocation`s and of the `Command`; the operator (`--send-commands` plus
//! `BENCH_OPERATOR_ARGS` / `BENCH_OPERATOR_ENV`, log in `BENCH_OPERATOR_LOG`) started and
//! ready; kube-apiserver's `/metrics` read; the `Command` created; followed until it and all N
//! children are `Finished=True` (`BENCH_DEADLINE` from the operator's start, default `10m`);
//! 5 s more for calls and writes that should not happen; the figures; SIGTERM (exit 0).
//!
//! Printed, as figures next to the targets (never a verdict on speed):
//! - child exists after SSM lists its node (listed = the send, as the simulator recorded it, +
//!   the node's offset; exists = the bench's watch first sees the child): p50/p99/max, and by
//!   when nodes were listed;
//! - child status lag (the watch sees `Finished=True` − the node's end): p50/p99/max, and by
//!   when nodes ended;
//! - the `Command` `Finished` (seen by its watch) − SSM's last node end;
//! - API writes per child with its Events, counted by kube-apiserver
//!   (`apiserver_request_total`, mutating verbs, before the create and after the end) by
//!   resource, subresource and verb, with the operator's own count;
//! - SSM calls per node by operation (the simulator's counters);
//! - the operator's peak RSS (`VmHWM`) and CPU, the other processes' CPU;
//! - the tail: the slowest children with when their node was listed or ended, reconcile
//!   durations (operator histogram);
//! - whether every child ended as scripted, the `Command`'s counts, `refusedChildren`, and
//!   that SSM got exactly one `SendCommand`.
//!
//! The variant fails (exit 1, after the figures) only if something broke: set-up, the
//! deadline, a child or the `Command` ending otherwise than scripted, refused children, a
//! second send, or the operator not exiting 0 on SIGTERM.

use std::collections::{BTreeMap, HashSet};
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use ssm_operator::api::{Command, CommandInvocation, CommandSpec, CommandStatus, Target};
use ssm_sim::{Invocation, Plugin, Simulator};
use tokio::sync::{mpsc, oneshot};

use super::{
    cpu_accounts, cpu_seconds, cpu_used, duration, env_or, install_crd, instance_id,
    instance_index, metric, operator_env, operator_env_text, positive, quantile, row, samples,
    secs, start_testbed, Operator, NAMESPACE, PLUGIN, PROGRESS_EVERY, QUIET_WINDOW, WRITE_SETTLE,
};

/// The `Command`'s name; its children are `fleet-<instance id>`.
const COMMAND_NAME: &str = "fleet";
/// The single-step document.
const DOCUMENT: &str = "AWS-RunShellScript";
/// The two-step variant's document (any name: the simulator runs what it is scripted to).
const TWO_STEP_DOCUMENT: &str = "bench-two-step";
const STEPS: [&str; 2] = ["first", "second"];
/// The target every node is found under.
const TAG_KEY: &str = "tag:Fleet";
const TAG_VALUE: &str = "bench";
/// Node k fails when `k % FAILING_EVERY == FAILING_EVERY - 1`.
const FAILING_EVERY: usize = 10;
/// Children the watch sees further apart than this are in different bursts.
const BURST_GAP: Duration = Duration::from_millis(300);
/// A node goes InProgress within this long after it is listed.
const START_WITHIN_MS: u64 = 500;

/// The targets of issue 18.
const TARGET_EXISTS_P99: f64 = 3.0;
const TARGET_LAG_P99: f64 = 5.0;
const TARGET_COMMAND_FINISHED: f64 = 2.0;
const TARGET_WRITES_PER_CHILD: f64 = 3.0;
const TARGET_CALLS_PER_NODE: f64 = 0.5;
const TARGET_RSS_MIB: f64 = 96.0;

/// The verbs that change something, as kube-apiserver's metrics name them.
const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `command`: `AWS-RunShellScript`, one step.
    Single,
    /// `command-two-step`: steps `first` and `second`.
    TwoStep,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Single, Variant::TwoStep];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Single => "command",
            Variant::TwoStep => "command-two-step",
        }
    }

    pub fn named(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    fn document(self) -> &'static str {
        match self {
            Variant::Single => DOCUMENT,
            Variant::TwoStep => TWO_STEP_DOCUMENT,
        }
    }
}

/// What the environment asks for.
#[derive(Debug, Clone)]
struct Config {
    nodes: usize,
    listed_over: Duration,
    run_min: Duration,
    run_max: Duration,
    seed: u64,
    deadline: Duration,
    operator_args: Vec<String>,
    operator_env: Vec<(String, String)>,
    /// `BENCH_OPERATOR_LOG`, with `.<variant>` appended when several variants run.
    operator_log: Option<std::path::PathBuf>,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let run_min = duration("BENCH_RUN_MIN", "3s")?;
        let run_max = duration("BENCH_RUN_MAX", "5s")?;
        if run_min > run_max {
            return Err("BENCH_RUN_MIN must not exceed BENCH_RUN_MAX".into());
        }
        Ok(Config {
            nodes: positive("BENCH_NODES", 5000)?,
            listed_over: duration("BENCH_LISTED_OVER", "30s")?,
            run_min,
            run_max,
            seed: env_or("BENCH_SEED", "1")
                .parse()
                .map_err(|_| "BENCH_SEED must be an unsigned integer".to_string())?,
            deadline: duration("BENCH_DEADLINE", "10m")?,
            operator_args: env_or("BENCH_OPERATOR_ARGS", "")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            operator_env: operator_env(&env_or("BENCH_OPERATOR_ENV", ""))?,
            operator_log: std::env::var_os("BENCH_OPERATOR_LOG").map(Into::into),
        })
    }
}

/// Runs the variants in order; returns each one's summary line or what broke.
pub async fn run_all(variants: &[Variant]) -> Vec<Result<String, String>> {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(message) => return vec![Err(message)],
    };
    let mut results = Vec::new();
    for &variant in variants {
        let mut config = config.clone();
        if variants.len() > 1 {
            config.operator_log = config.operator_log.map(|path| {
                let mut path = path.into_os_string();
                path.push(format!(".{}", variant.name()));
                path.into()
            });
        }
        results.push(run(&config, variant).await);
    }
    results
}

/// One node's script, times from when SSM lists it.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// When SSM lists it, after the send.
    listed: Duration,
    /// When it goes InProgress, after `listed`.
    starts: Duration,
    /// When it ends, after `listed`.
    runs: Duration,
    failed: bool,
}

impl Node {
    /// When it ends, after the send.
    fn ends(&self) -> Duration {
        self.listed + self.runs
    }

    fn status(&self) -> &'static str {
        if self.failed {
            "Failed"
        } else {
            "Success"
        }
    }

    fn code(&self) -> i32 {
        i32::from(self.failed)
    }
}

/// The N nodes' scripts: listed evenly over `listed_over`, run times from the seeded RNG,
/// every tenth failing.
fn nodes(config: &Config) -> Vec<Node> {
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let n = config.nodes;
    let (min, max) = (millis(config.run_min), millis(config.run_max));
    (0..n)
        .map(|k| {
            let listed = if n > 1 {
                config.listed_over.mul_f64(k as f64 / (n - 1) as f64)
            } else {
                Duration::ZERO
            };
            let runs = rng.u64(min..=max);
            Node {
                listed,
                starts: Duration::from_millis(rng.u64(0..=START_WITHIN_MS.min(runs))),
                runs: Duration::from_millis(runs),
                failed: k % FAILING_EVERY == FAILING_EVERY - 1,
            }
        })
        .collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Tells the simulator what SendCommand's targets resolve to and what each node plays.
fn script(sim: &Simulator, variant: Variant, nodes: &[Node]) {
    sim.resolve_target(
        TAG_KEY,
        TAG_VALUE,
        nodes
            .iter()
            .enumerate()
            .map(|(k, node)| (instance_id(k), node.listed)),
    );
    for (k, node) in nodes.iter().enumerate() {
        let instance = instance_id(k);
        let mut invocation = Invocation::new(&instance);
        let last = |name: &str, from: Duration| {
            if node.failed {
                Plugin::failing_at(name, from, node.runs, 1)
                    .stdout(format!("patching {instance}\n"))
                    .stderr(format!("patch failed on {instance}: exit status 1\n"))
            } else {
                Plugin::succeeding_at(name, from, node.runs).stdout(format!("patched {instance}\n"))
            }
        };
        invocation = match variant {
            Variant::Single => invocation.plugin(last(PLUGIN, node.starts)),
            Variant::TwoStep => {
                let half = node.starts + (node.runs - node.starts) / 2;
                invocation
                    .plugin(
                        Plugin::succeeding_at(STEPS[0], node.starts, half)
                            .stdout(format!("downloaded on {instance}\n")),
                    )
                    .plugin(last(STEPS[1], half))
            }
        };
        sim.script_instance(invocation);
    }
}

/// The `Command` the bench creates.
fn command_spec(variant: Variant) -> CommandSpec {
    CommandSpec {
        document_name: variant.document().into(),
        parameters: Some([("commands".to_string(), vec!["./patch.sh".to_string()])].into()),
        targets: Some(vec![Target {
            key: TAG_KEY.into(),
            values: vec![TAG_VALUE.into()],
        }]),
        comment: Some("bench fleet".into()),
        timeout_seconds: Some(600),
        ..CommandSpec::default()
    }
}

/// The node index of a child named `fleet-<instance id>`.
fn child_index(name: &str, n: usize) -> Option<usize> {
    let instance = name.strip_prefix(COMMAND_NAME)?.strip_prefix('-')?;
    instance_index(instance).filter(|&k| k < n)
}

/// How a child was first seen `Finished=True`.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    status: Option<String>,
    code: Option<i32>,
    plugin: Option<String>,
    steps: usize,
}

/// What the bench's watches report.
enum Seen {
    /// A child seen for the first time, or first seen `Finished=True`.
    Child {
        name: String,
        at: Instant,
        finished: Option<Outcome>,
    },
    /// The `Command` as the watch delivered it.
    Command {
        at: Instant,
        status: Box<Option<CommandStatus>>,
    },
}

/// Reports every child the first time it is seen and the first time it is `Finished=True`.
async fn watch_children(
    api: Api<CommandInvocation>,
    tx: mpsc::UnboundedSender<Seen>,
    synced: oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let mut known: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut stream = pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let at = Instant::now();
                let name = obj.name_any();
                let is_finished = obj
                    .condition("Finished")
                    .is_some_and(|c| c.status == "True");
                let new = known.insert(name.clone());
                let outcome = if is_finished && finished.insert(name.clone()) {
                    let status = obj.status.as_ref();
                    Some(Outcome {
                        at,
                        status: status.and_then(|s| s.status.clone()),
                        code: status.and_then(|s| s.response_code),
                        plugin: status.and_then(|s| s.plugin_name.clone()),
                        steps: status.and_then(|s| s.steps.as_ref()).map_or(0, Vec::len),
                    })
                } else {
                    None
                };
                if (new || outcome.is_some())
                    && tx
                        .send(Seen::Child {
                            name,
                            at,
                            finished: outcome,
                        })
                        .is_err()
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
            Err(e) => eprintln!("bench command: children watch error (retrying): {e}"),
        }
    }
}

/// Reports the `Command` every time the watch delivers it.
async fn watch_command(
    api: Api<Command>,
    tx: mpsc::UnboundedSender<Seen>,
    synced: oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let mut stream = pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let at = Instant::now();
                if obj.name_any() != COMMAND_NAME {
                    continue;
                }
                let status = Box::new(obj.status);
                if tx.send(Seen::Command { at, status }).is_err() {
                    return;
                }
            }
            Ok(Event::InitDone) => {
                if let Some(synced) = synced.take() {
                    let _ = synced.send(());
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("bench command: Command watch error (retrying): {e}"),
        }
    }
}

/// A `Command` status's `Finished` condition.
fn finished_condition(status: &CommandStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == "Finished")
}

/// What following saw.
struct Followed {
    /// Per node: when its child was first seen.
    exists: Vec<Option<Instant>>,
    /// Per node: how its child was first seen `Finished=True`.
    finished: Vec<Option<Outcome>>,
    /// Children whose name matches no node.
    strangers: Vec<String>,
    /// When the `Command` was first seen `Finished=True`.
    command_finished: Option<Instant>,
    /// The `Command`'s status as last seen.
    command_status: Option<CommandStatus>,
    /// When the watch saw the `Command`'s status change, and its completed count then.
    command_changes: Vec<(Instant, i32)>,
    /// When the simulator recorded the send, in this process's monotonic clock.
    sent_at: Option<Instant>,
    /// When following ended.
    at: Instant,
    /// Why following ended early.
    broken: Option<String>,
}

impl Followed {
    fn children_finished(&self) -> usize {
        self.finished.iter().flatten().count()
    }
}

/// The monotonic instant of a wall-clock time of this process (the simulator's records).
fn instant_of(wall: SystemTime) -> Instant {
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    match wall_now.duration_since(wall) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(ahead) => now + ahead.duration(),
    }
}

/// Follows the watches until the `Command` and every child are `Finished=True`, the
/// operator exits, a watch ends or the deadline passes.
async fn follow(
    config: &Config,
    sim: &Simulator,
    operator: &mut Operator,
    started: Instant,
    created: Instant,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
) -> Followed {
    let n = config.nodes;
    let mut followed = Followed {
        exists: vec![None; n],
        finished: vec![None; n],
        strangers: Vec::new(),
        command_finished: None,
        command_status: None,
        command_changes: Vec::new(),
        sent_at: None,
        at: Instant::now(),
        broken: None,
    };
    let deadline = tokio::time::Instant::from_std(started + config.deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut next_progress = created + PROGRESS_EVERY;
    let mut existing = 0;
    while followed.command_finished.is_none() || followed.children_finished() < n {
        tokio::select! {
            got = rx.recv() => match got {
                Some(Seen::Child { name, at, finished }) => match child_index(&name, n) {
                    Some(k) => {
                        if followed.exists[k].is_none() {
                            followed.exists[k] = Some(at);
                            existing += 1;
                        }
                        if finished.is_some() && followed.finished[k].is_none() {
                            followed.finished[k] = finished;
                        }
                    }
                    None => followed.strangers.push(name),
                },
                Some(Seen::Command { at, status }) => {
                    let done = status
                        .as_ref()
                        .as_ref()
                        .and_then(|s| finished_condition(s))
                        .is_some_and(|c| c.status == "True");
                    if done && followed.command_finished.is_none() {
                        followed.command_finished = Some(at);
                    }
                    if *status != followed.command_status {
                        let completed = status
                            .as_ref()
                            .as_ref()
                            .and_then(|s| s.completed_count)
                            .unwrap_or(0);
                        followed.command_changes.push((at, completed));
                    }
                    followed.command_status = *status;
                }
                None => {
                    followed.broken = Some("a watch of the bench ended".into());
                    break;
                }
            },
            _ = tick.tick() => {
                if let Some(status) = operator.exited() {
                    followed.broken = Some(format!("the operator exited early ({status})"));
                    break;
                }
                if followed.sent_at.is_none() {
                    followed.sent_at = sim.sent().first().map(|s| instant_of(s.at));
                }
                let now = Instant::now();
                if now >= next_progress {
                    next_progress = now + PROGRESS_EVERY;
                    println!(
                        "  … {:>5.0} s after the Command was created: {existing} children, {} \
                         Finished, Command {}, {} SSM calls",
                        secs(now - created),
                        followed.children_finished(),
                        followed
                            .command_status
                            .as_ref()
                            .and_then(|s| s.status.clone())
                            .unwrap_or_else(|| "without status".into()),
                        sim.total_calls(),
                    );
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                followed.broken = Some(format!(
                    "{} of {n} children and {} Command Finished within {:?} of the operator's \
                     start",
                    followed.children_finished(),
                    if followed.command_finished.is_some() { "the" } else { "not the" },
                    config.deadline
                ));
                break;
            }
        }
    }
    if followed.sent_at.is_none() {
        followed.sent_at = sim.sent().first().map(|s| instant_of(s.at));
    }
    followed.at = Instant::now();
    followed
}

/// kube-apiserver's `/metrics`.
pub(super) async fn apiserver_metrics(client: &Client) -> Result<String, String> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| format!("kube-apiserver /metrics request: {e}"))?;
    client
        .request_text(request)
        .await
        .map_err(|e| format!("kube-apiserver /metrics: {e}"))
}

/// kube-apiserver's write requests by (resource, subresource, verb, code), from
/// `apiserver_request_total`.
type Writes = BTreeMap<(String, String, String, String), f64>;

fn writes(text: &str) -> Writes {
    let mut writes = Writes::new();
    for (labels, value) in samples(text, "apiserver_request_total") {
        let verb = label(labels, "verb");
        if !WRITE_VERBS.contains(&verb.as_str()) {
            continue;
        }
        let key = (
            label(labels, "resource"),
            label(labels, "subresource"),
            verb,
            label(labels, "code"),
        );
        *writes.entry(key).or_default() += value;
    }
    writes
}

/// A label's value in a sample's label text (`a="x",b="y"`), empty if absent.
pub(super) fn label(labels: &str, name: &str) -> String {
    labels
        .split(',')
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
        .map_or_else(String::new, |v| v.trim_matches('"').to_string())
}

/// `after − before`, zero entries left out.
fn writes_between(before: &Writes, after: &Writes) -> Writes {
    after
        .iter()
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, value)| *value > 0.0)
        .collect()
}

/// The sum of the writes to `resource` (any subresource, verb, code).
fn writes_to(writes: &Writes, resource: &str) -> f64 {
    writes
        .iter()
        .filter(|((r, ..), _)| r == resource)
        .map(|(_, v)| v)
        .fold(0.0, |sum, x| sum + x)
}

/// `resource[/subresource] VERB n (code m, ...)` per resource and verb.
fn describe_writes(writes: &Writes, resource: &str) -> String {
    let mut by_verb: BTreeMap<(String, String), (f64, BTreeMap<String, f64>)> = BTreeMap::new();
    for ((r, sub, verb, code), value) in writes {
        if r != resource {
            continue;
        }
        let entry = by_verb.entry((sub.clone(), verb.clone())).or_default();
        entry.0 += value;
        *entry.1.entry(code.clone()).or_default() += value;
    }
    if by_verb.is_empty() {
        return "none".into();
    }
    by_verb
        .iter()
        .map(|((sub, verb), (total, codes))| {
            let codes: Vec<String> = codes.iter().map(|(c, v)| format!("{c}: {v:.0}")).collect();
            let what = if sub.is_empty() {
                verb.clone()
            } else {
                format!("{sub} {verb}")
            };
            format!("{what} {total:.0} ({})", codes.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One run of a variant. Returns its summary line, or what broke (after the figures).
async fn run(config: &Config, variant: Variant) -> Result<String, String> {
    let n = config.nodes;
    println!();
    println!(
        "== bench scale, variant {}: one Command ({}, targets {TAG_KEY}={TAG_VALUE}) resolving \
         to {n} nodes listed evenly over {:?} after the send, each running {:?} to {:?} \
         (seed {}), every {FAILING_EVERY}th failing{}, operator default flags + \
         --send-commands{}{} ==",
        variant.name(),
        variant.document(),
        config.listed_over,
        config.run_min,
        config.run_max,
        config.seed,
        if variant == Variant::TwoStep {
            " in its second step (steps first, second; children name no step)"
        } else {
            ""
        },
        if config.operator_args.is_empty() {
            String::new()
        } else {
            format!(" {}", config.operator_args.join(" "))
        },
        operator_env_text(&config.operator_env),
    );
    let testbed = start_testbed().await?;
    install_crd(&testbed.cluster, "command").await?;
    let client = testbed.cluster.client().await.map_err(|e| e.to_string())?;
    let commands: Api<Command> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes = nodes(config);
    script(&testbed.sim, variant, &nodes);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let (children_synced, children_ready) = oneshot::channel();
    let (command_synced, command_ready) = oneshot::channel();
    let children_watch = tokio::spawn(watch_children(
        testbed.api.clone(),
        tx.clone(),
        children_synced,
    ));
    let command_watch = tokio::spawn(watch_command(commands.clone(), tx, command_synced));
    let (a, b) = tokio::join!(children_ready, command_ready);
    a.and(b)
        .map_err(|_| "a watch of the bench ended before it synced".to_string())?;

    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let log = config
        .operator_log
        .clone()
        .unwrap_or_else(|| scratch.path().join("operator.log"));
    let mut operator_args = vec!["--send-commands".to_string()];
    operator_args.extend(config.operator_args.iter().cloned());
    let mut operator = Operator::start(
        &testbed.cluster,
        &testbed.sim.endpoint(),
        &log,
        &operator_args,
        &config.operator_env,
    )?;
    let started = Instant::now();
    let others = cpu_accounts(&testbed.cluster, "bench (simulator, watches)");
    let cpu_before: Vec<Option<f64>> = others.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    wait_ready(&mut operator, started).await?;
    let ready = started.elapsed();
    let writes_before = writes(&apiserver_metrics(&client).await?);

    commands
        .create(
            &PostParams::default(),
            &Command::new(COMMAND_NAME, command_spec(variant)),
        )
        .await
        .map_err(|e| format!("create the Command: {e}"))?;
    let created = Instant::now();
    let followed = follow(
        config,
        &testbed.sim,
        &mut operator,
        started,
        created,
        &mut rx,
    )
    .await;
    children_watch.abort();
    command_watch.abort();

    // The quiet window: SSM calls and writes after everything was Finished.
    let calls_at_end = ssm_calls(&testbed.sim);
    let mut metrics_at_end = None;
    if followed.broken.is_none() {
        tokio::time::sleep(WRITE_SETTLE).await;
        metrics_at_end = operator.metrics().await;
        tokio::time::sleep(QUIET_WINDOW - WRITE_SETTLE).await;
    }
    let writes_after = writes(&apiserver_metrics(&client).await?);
    let metrics = operator.metrics().await.unwrap_or_default();
    let operator_cpu = operator.pid().and_then(cpu_seconds);
    let peak_rss = operator.peak_rss();
    let cpu_others = cpu_used(&others, &cpu_before);

    row(
        "operator ready (/readyz)",
        format!("{:.1} s after its start", secs(ready)),
    );
    let Some(sent_at) = followed.sent_at else {
        eprintln!("--- operator log (tail) ---\n{}", operator.log_tail());
        return Err("SSM never got a SendCommand".into());
    };
    row(
        "Command created → SendCommand",
        format!("{:.2} s", secs(sent_at.saturating_duration_since(created))),
    );
    let figures = Figures {
        variant,
        nodes: &nodes,
        followed: &followed,
        sent_at,
    };
    let exists = figures.exists();
    let lags = figures.lags();
    let command_after = figures.command_finished();
    let ssm = figures.ssm(&testbed.sim, &calls_at_end, &metrics);
    let writes = writes_between(&writes_before, &writes_after);
    let per_child = figures.writes(&writes, &metrics, metrics_at_end.as_deref());
    events_by_object(&client, n).await;
    operator_figures(&metrics, operator_cpu, peak_rss, &cpu_others);
    let wrong = figures.outcomes(&testbed.sim);

    if let Some(problem) = followed.broken {
        eprintln!("--- operator log (tail) ---\n{}", operator.log_tail());
        return Err(problem);
    }
    operator.stop().await?;
    drop(testbed);
    if let Some(problem) = wrong {
        return Err(problem);
    }
    Ok(format!(
        "{}: N={n} child exists p99 {:.2} s (≤ {TARGET_EXISTS_P99}), status lag p99 {:.2} s \
         (≤ {TARGET_LAG_P99}), Command Finished {:.2} s after the last node \
         (≤ {TARGET_COMMAND_FINISHED}), {per_child:.2} API writes/child \
         (≤ {TARGET_WRITES_PER_CHILD}), {ssm:.2} SSM calls/node (≤ {TARGET_CALLS_PER_NODE}), \
         operator CPU {}, peak RSS {} (≤ {TARGET_RSS_MIB} MiB)",
        variant.name(),
        secs(quantile(&exists, 99.0)),
        secs(quantile(&lags, 99.0)),
        command_after,
        operator_cpu.map_or("?".into(), |s| format!("{s:.1} s")),
        peak_rss.map_or("?".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)),
    ))
}

/// Waits up to a minute for the operator's `/readyz`.
async fn wait_ready(operator: &mut Operator, started: Instant) -> Result<(), String> {
    while !operator.ready().await {
        if started.elapsed() > Duration::from_secs(60) || operator.exited().is_some() {
            return Err(format!(
                "the operator is not ready:\n{}",
                operator.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The simulator's calls by operation.
fn ssm_calls(sim: &Simulator) -> BTreeMap<&'static str, u64> {
    super::SsmCounts::OPERATIONS
        .iter()
        .map(|&op| (op, sim.calls(op)))
        .chain([("all", sim.total_calls())])
        .collect()
}

/// What the figures are computed from.
struct Figures<'a> {
    variant: Variant,
    nodes: &'a [Node],
    followed: &'a Followed,
    /// When SSM got the send.
    sent_at: Instant,
}

impl Figures<'_> {
    /// Child exists after SSM lists its node; returns the sorted delays.
    fn exists(&self) -> Vec<Duration> {
        let mut delays: Vec<(Duration, usize)> = self
            .nodes
            .iter()
            .zip(&self.followed.exists)
            .enumerate()
            .filter_map(|(k, (node, seen))| {
                Some((
                    seen.as_ref()?
                        .saturating_duration_since(self.sent_at + node.listed),
                    k,
                ))
            })
            .collect();
        let sorted = spread_row(
            "child exists after SSM lists node",
            &delays,
            self.nodes.len(),
            TARGET_EXISTS_P99,
        );
        self.by_window("  by listing time, p50/p99/max", &delays, |node| {
            node.listed
        });
        delays.sort_by(|a, b| b.cmp(a));
        row(
            "  slowest (delay, listed at)",
            delays
                .iter()
                .take(5)
                .map(|(d, k)| {
                    format!(
                        "{} {:.2} s at {:.2} s",
                        instance_id(*k),
                        secs(*d),
                        secs(self.nodes[*k].listed)
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        );
        let late = self
            .nodes
            .iter()
            .zip(&self.followed.exists)
            .filter(|(node, seen)| seen.is_some_and(|at| at > self.sent_at + node.ends()))
            .count();
        row(
            "  children made after node end",
            format!("{late} of {}", self.nodes.len()),
        );
        self.bursts();
        sorted
    }

    /// Children appear in bursts, one per listing the operator acts on: how many, how far
    /// apart and how big (a child waits for the next burst after its node is listed).
    fn bursts(&self) {
        let mut seen: Vec<Instant> = self.followed.exists.iter().flatten().copied().collect();
        seen.sort();
        let mut gaps: Vec<Duration> = Vec::new();
        let mut sizes: Vec<Duration> = Vec::new();
        let mut size = 0u32;
        for pair in seen.windows(2) {
            size += 1;
            let gap = pair[1] - pair[0];
            if gap > BURST_GAP {
                gaps.push(gap);
                sizes.push(Duration::from_secs(size.into()));
                size = 0;
            }
        }
        if !seen.is_empty() {
            sizes.push(Duration::from_secs((size + 1).into()));
        }
        gaps.sort();
        sizes.sort();
        row(
            "  bursts of children (watch)",
            format!(
                "{} (apart > {BURST_GAP:?}); gap p50 {:.2} s, p99 {:.2} s, max {:.2} s; size \
                 p50 {}, max {}",
                sizes.len(),
                secs(quantile(&gaps, 50.0)),
                secs(quantile(&gaps, 99.0)),
                secs(quantile(&gaps, 100.0)),
                quantile(&sizes, 50.0).as_secs(),
                quantile(&sizes, 100.0).as_secs(),
            ),
        );
    }

    /// Child status lag after its node's end; returns the sorted lags.
    fn lags(&self) -> Vec<Duration> {
        let mut lags: Vec<(Duration, usize)> = self
            .nodes
            .iter()
            .zip(&self.followed.finished)
            .enumerate()
            .filter_map(|(k, (node, seen))| {
                Some((
                    seen.as_ref()?
                        .at
                        .saturating_duration_since(self.sent_at + node.ends()),
                    k,
                ))
            })
            .collect();
        let sorted = spread_row(
            "child status lag after node end",
            &lags,
            self.nodes.len(),
            TARGET_LAG_P99,
        );
        self.by_window("  by node end time, p50/p99/max", &lags, Node::ends);
        lags.sort_by(|a, b| b.cmp(a));
        row(
            "  slowest (lag, ended at)",
            lags.iter()
                .take(5)
                .map(|(d, k)| {
                    let exists = self.followed.exists[*k].map_or("?".into(), |at| {
                        format!("{:.2}", secs(at.saturating_duration_since(self.sent_at)))
                    });
                    format!(
                        "{} {:.2} s at {:.2} s (child seen at {exists} s)",
                        instance_id(*k),
                        secs(*d),
                        secs(self.nodes[*k].ends())
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        );
        sorted
    }

    /// Rows of p50/p99/max over six windows of the time `when` picks (from the send).
    fn by_window(&self, label: &str, values: &[(Duration, usize)], when: fn(&Node) -> Duration) {
        let last = self.nodes.iter().map(when).max().unwrap_or_default();
        let windows = 6;
        let width = (last / windows).max(Duration::from_millis(1));
        let mut buckets: Vec<Vec<Duration>> = vec![Vec::new(); windows as usize];
        for &(value, k) in values {
            let w = (when(&self.nodes[k]).as_secs_f64() / width.as_secs_f64()) as usize;
            buckets[w.min(windows as usize - 1)].push(value);
        }
        let parts: Vec<String> = buckets
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(w, bucket)| {
                bucket.sort();
                format!(
                    "{:.0}-{:.0} s: {:.2}/{:.2}/{:.2}",
                    secs(width * w as u32),
                    secs(width * (w as u32 + 1)),
                    secs(quantile(bucket, 50.0)),
                    secs(quantile(bucket, 99.0)),
                    secs(quantile(bucket, 100.0)),
                )
            })
            .collect();
        row(label, parts.join(", "));
    }

    /// The `Command` Finished after SSM's last node end, in seconds (negative: before).
    fn command_finished(&self) -> f64 {
        let last = self.nodes.iter().map(Node::ends).max().unwrap_or_default();
        let last_end = self.sent_at + last;
        match self.followed.command_finished {
            Some(at) => {
                let after = if at >= last_end {
                    secs(at - last_end)
                } else {
                    -secs(last_end - at)
                };
                row(
                    "Command Finished after last node",
                    format!(
                        "{after:.2} s (target ≤ {TARGET_COMMAND_FINISHED} s; last node ended \
                         {:.2} s after the send)",
                        secs(last)
                    ),
                );
                self.command_changes(last_end);
                after
            }
            None => {
                row("Command Finished after last node", "never seen");
                f64::NAN
            }
        }
    }

    /// How often the `Command`'s status changed (each change is a write after a poll of
    /// SSM), and when the watch first saw every node completed.
    fn command_changes(&self, last_end: Instant) {
        let changes = &self.followed.command_changes;
        let mut gaps: Vec<Duration> = changes.windows(2).map(|p| p[1].0 - p[0].0).collect();
        gaps.sort();
        let n = i32::try_from(self.nodes.len()).unwrap_or(i32::MAX);
        let since_last = |at: Instant| {
            if at >= last_end {
                format!("{:+.2} s", secs(at - last_end))
            } else {
                format!("-{:.2} s", secs(last_end - at))
            }
        };
        let all_done = changes
            .iter()
            .find(|(_, completed)| *completed >= n)
            .map_or("never".into(), |(at, _)| since_last(*at));
        let before_last = changes
            .iter()
            .rev()
            .find(|(at, _)| *at < last_end)
            .map_or("none".into(), |(at, completed)| {
                format!("{} ({completed} done)", since_last(*at))
            });
        row(
            "  Command status changes (watch)",
            format!(
                "{}; gap p50 {:.2} s, max {:.2} s; last before the last node's end {before_last}; \
                 {n}/{n} done seen {all_done} after it",
                changes.len(),
                secs(quantile(&gaps, 50.0)),
                secs(quantile(&gaps, 100.0)),
            ),
        );
    }

    /// SSM calls by operation, per node; returns all calls per node.
    fn ssm(&self, sim: &Simulator, at_end: &BTreeMap<&'static str, u64>, metrics: &str) -> f64 {
        let n = self.nodes.len() as f64;
        let all = at_end.get("all").copied().unwrap_or(0);
        row(
            "SSM calls (simulator)",
            at_end
                .iter()
                .filter(|(op, calls)| **calls > 0 && **op != "all")
                .map(|(op, calls)| format!("{op} {calls} ({:.3}/node)", *calls as f64 / n))
                .collect::<Vec<_>>()
                .join(", "),
        );
        row(
            "SSM calls per node",
            format!(
                "{:.3} ({all} in all; target ≤ {TARGET_CALLS_PER_NODE})",
                all as f64 / n
            ),
        );
        row(
            "SSM calls (operator, by outcome)",
            super::by_label(metrics, "ssm_operator_ssm_calls_total", "outcome"),
        );
        row(
            format!("SSM calls in the {QUIET_WINDOW:?} after"),
            format!("{}", sim.total_calls().saturating_sub(all)),
        );
        all as f64 / n
    }

    /// API writes counted by kube-apiserver and by the operator; returns writes per child
    /// (children and Events).
    fn writes(&self, writes: &Writes, metrics: &str, metrics_at_end: Option<&str>) -> f64 {
        let n = self.nodes.len() as f64;
        let children = writes_to(writes, "commandinvocations");
        let events = writes_to(writes, "events");
        let command = writes_to(writes, "commands");
        row(
            "API writes, CommandInvocations",
            describe_writes(writes, "commandinvocations"),
        );
        row("API writes, Events", describe_writes(writes, "events"));
        row(
            "API writes, the Command",
            format!(
                "{} (1 POST is the bench's)",
                describe_writes(writes, "commands")
            ),
        );
        let per_child = (children + events) / n;
        row(
            "API writes per child, with Events",
            format!(
                "{per_child:.2} (target ≤ {TARGET_WRITES_PER_CHILD}; children {:.2}, Events \
                 {:.2}; with the Command's own {:.2})",
                children / n,
                events / n,
                (children + events + command - 1.0) / n
            ),
        );
        let status_writes = metric(metrics, "ssm_operator_status_writes_total", None);
        let operator_events = metric(metrics, "ssm_operator_events_total", None);
        row(
            "operator's count",
            format!(
                "{status_writes:.0} status writes ({:.2}/child), {operator_events:.0} Events \
                 ({:.2}/child), {:.0} reconciles, {:.0} reconcile errors{}",
                status_writes / n,
                operator_events / n,
                metric(metrics, "ssm_operator_reconciles_total", None),
                metric(metrics, "ssm_operator_reconcile_errors_total", None),
                match super::by_label(metrics, "ssm_operator_reconcile_errors_total", "error") {
                    none if none == "none" => String::new(),
                    errors => format!(" ({errors})"),
                }
            ),
        );
        if let Some(at_end) = metrics_at_end {
            row(
                format!("status writes in the {QUIET_WINDOW:?} after"),
                format!(
                    "{:.0} (from +{WRITE_SETTLE:?})",
                    status_writes - metric(at_end, "ssm_operator_status_writes_total", None)
                ),
            );
        }
        per_child
    }

    /// Whether every child and the `Command` ended as scripted, with no refused child and one
    /// send; prints the rows and returns what is wrong, if anything.
    fn outcomes(&self, sim: &Simulator) -> Option<String> {
        let n = self.nodes.len();
        let mut wrong: Vec<String> = Vec::new();
        for (k, (node, seen)) in self.nodes.iter().zip(&self.followed.finished).enumerate() {
            let Some(seen) = seen else { continue };
            let mut ok =
                seen.status.as_deref() == Some(node.status()) && seen.code == Some(node.code());
            if self.variant == Variant::TwoStep {
                ok &= seen.plugin.as_deref() == Some(STEPS[1]) && seen.steps == STEPS.len();
            }
            if !ok {
                wrong.push(format!(
                    "{}: {:?}/{:?} step {:?} ({} steps), scripted {}/{}",
                    instance_id(k),
                    seen.status,
                    seen.code,
                    seen.plugin,
                    seen.steps,
                    node.status(),
                    node.code()
                ));
            }
        }
        let finished = self.followed.children_finished();
        let failed = self
            .followed
            .finished
            .iter()
            .flatten()
            .filter(|o| o.status.as_deref() == Some("Failed"))
            .count();
        row(
            "children Finished as scripted",
            if wrong.is_empty() {
                format!(
                    "{finished} of {n} ({failed} Failed = {:.1} %){}",
                    100.0 * failed as f64 / n as f64,
                    if self.followed.strangers.is_empty() {
                        String::new()
                    } else {
                        format!("; {} unexpected children", self.followed.strangers.len())
                    }
                )
            } else {
                format!(
                    "{} WRONG of {finished} Finished, e.g. {}",
                    wrong.len(),
                    wrong[..wrong.len().min(3)].join("; ")
                )
            },
        );
        let status = self.followed.command_status.clone().unwrap_or_default();
        let expected_errors = i32::try_from(n / FAILING_EVERY).unwrap_or(i32::MAX);
        let n32 = i32::try_from(n).unwrap_or(i32::MAX);
        let refused = status.refused_children.unwrap_or(0);
        row(
            "Command at the end",
            format!(
                "{} ({}), done {}, errors {}, refusedChildren {refused}",
                status.status.as_deref().unwrap_or("?"),
                finished_condition(&status).map_or("Finished unknown".into(), |c| format!(
                    "Finished={} {}",
                    c.status, c.reason
                )),
                status.done.as_deref().unwrap_or("?"),
                status.error_count.unwrap_or(-1),
            ),
        );
        let sends = sim.sent().len();
        row(
            "SendCommand (simulator)",
            format!("{sends} command(s) created"),
        );
        let expected_status = if expected_errors > 0 {
            "Failed"
        } else {
            "Success"
        };
        if !wrong.is_empty() {
            Some(format!(
                "{} children ended otherwise than scripted",
                wrong.len()
            ))
        } else if !self.followed.strangers.is_empty() {
            Some(format!(
                "unexpected children, e.g. {}",
                self.followed.strangers[0]
            ))
        } else if refused != 0 {
            Some(format!("{refused} refused children"))
        } else if sends != 1 {
            Some(format!("{sends} commands sent, expected 1"))
        } else if self.followed.broken.is_none()
            && (status.status.as_deref() != Some(expected_status)
                || status.target_count != Some(n32)
                || status.completed_count != Some(n32)
                || status.error_count != Some(expected_errors))
        {
            Some(format!(
                "the Command ended {:?} with target/completed/error counts {:?}/{:?}/{:?}, \
                 scripted {expected_status} {n}/{n}/{expected_errors}",
                status.status, status.target_count, status.completed_count, status.error_count
            ))
        } else {
            None
        }
    }
}

/// A row of p50/p99/max (and how many) against a target for p99; returns the sorted values.
fn spread_row(label: &str, values: &[(Duration, usize)], n: usize, target: f64) -> Vec<Duration> {
    let mut sorted: Vec<Duration> = values.iter().map(|(d, _)| *d).collect();
    sorted.sort();
    row(
        label,
        if sorted.is_empty() {
            "none seen".to_string()
        } else {
            format!(
                "p50 {:.2} s, p99 {:.2} s, max {:.2} s (target p99 ≤ {target} s){}",
                secs(quantile(&sorted, 50.0)),
                secs(quantile(&sorted, 99.0)),
                secs(quantile(&sorted, 100.0)),
                if sorted.len() < n {
                    format!(" over {} of {n}", sorted.len())
                } else {
                    String::new()
                }
            )
        },
    );
    sorted
}

/// The bench namespace's Events by the kind of object they are about, and reason.
async fn events_by_object(client: &Client, n: usize) {
    let api: Api<KubeEvent> = Api::namespaced(client.clone(), NAMESPACE);
    let events = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            row("Events stored", format!("? ({e})"));
            return;
        }
    };
    let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
    for event in &events {
        let kind = event
            .regarding
            .as_ref()
            .and_then(|r| r.kind.clone())
            .unwrap_or_default();
        let reason = event.reason.clone().unwrap_or_default();
        *by.entry((kind, reason)).or_default() += 1;
    }
    let on_children: usize = by
        .iter()
        .filter(|((kind, _), _)| kind == "CommandInvocation")
        .map(|(_, count)| count)
        .sum();
    row(
        "Events stored",
        format!(
            "{} ({:.2}/child on children): {}",
            events.len(),
            on_children as f64 / n as f64,
            by.iter()
                .map(|((kind, reason), count)| format!("{kind} {reason} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
}

/// The operator's reconcile durations and status lag (its histograms), CPU and memory.
fn operator_figures(metrics: &str, cpu: Option<f64>, peak_rss: Option<u64>, others: &[String]) {
    row(
        "reconcile duration (operator)",
        histogram(metrics, "ssm_operator_reconcile_duration_seconds", None),
    );
    for kind in ["CommandInvocation", "Command"] {
        // The operator's own measure: SSM's end of the run to its status write.
        row(
            format!("operator's status lag, {kind}"),
            histogram(
                metrics,
                "ssm_operator_status_lag_seconds",
                Some(&format!("kind=\"{kind}\"")),
            ),
        );
    }
    row(
        "operator CPU, whole run",
        cpu.map_or("?".into(), |s| format!("{s:.1} s")),
    );
    row(
        "operator peak RSS (VmHWM)",
        peak_rss.map_or("?".into(), |kb| {
            format!(
                "{:.1} MiB (target ≤ {TARGET_RSS_MIB} MiB)",
                kb as f64 / 1024.0
            )
        }),
    );
    row("CPU from the operator's start", others.join(", "));
}

/// A histogram in OpenMetrics text: count, mean and the bucket bounds of p50/p99/max.
fn histogram(text: &str, name: &str, only: Option<&str>) -> String {
    let mut buckets: Vec<(f64, f64)> = samples(text, &format!("{name}_bucket"))
        .filter(|(labels, _)| only.is_none_or(|l| labels.contains(l)))
        .filter_map(|(labels, count)| {
            let le = label(labels, "le");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = metric(text, &format!("{name}_count"), only);
    let sum = metric(text, &format!("{name}_sum"), only);
    if count == 0.0 {
        return "none".into();
    }
    let bound = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map_or("?".into(), |(b, _)| format!("≤ {b}"))
    };
    format!(
        "{count:.0}, mean {:.3} s, p50 {} s, p99 {} s, max {} s",
        sum / count,
        bound(0.5),
        bound(0.99),
        bound(1.0)
    )
}
