//! `make bench`: the operator on a fleet, with its default settings.
//!
//! The workload (sizes from the environment):
//! - `BENCH_COMMANDS` commands (default 20) × `BENCH_INSTANCES` instances (default 500) =
//!   N CommandInvocations (10,000), one per (command, instance), single plugin.
//! - Each invocation's timeline, drawn with a seeded RNG (`BENCH_SEED`, default 1): Pending,
//!   InProgress at a uniform time in [0, T], terminal at T uniform in [0, `BENCH_SPREAD`]
//!   (default `60s`); 5 % end Failed with exit code 1, the rest Success with exit code 0.
//!
//! One run of a variant:
//! 1. starts a real etcd + kube-apiserver (`testbed`, binaries from `KUBEBUILDER_ASSETS`),
//!    installs the shipped CRD, and starts the SSM simulator in this process;
//! 2. creates all N CommandInvocations (64 creates in flight), the operator not running yet;
//! 3. starts a watch of them (until its initial list is done), then adds the commands to the
//!    simulator ("sent"): every node is Pending for `BENCH_LEAD` (default `5s`), then its
//!    timeline starts, as a fleet command's nodes start while the operator already runs
//!    (`BENCH_LEAD=0`: the operator starts, lists and makes its first reads while nodes finish);
//! 4. right after sending, starts the real `ssm-operator run` binary with its DEFAULT flags (only `--namespace`,
//!    `--http-bind`, kubeconfig and AWS environment; `BENCH_OPERATOR_ARGS` adds flags and
//!    `BENCH_OPERATOR_ENV` (`K=V,K2=V2`) environment variables, to the operator only, for
//!    experiments) and follows the watch until every resource is `Finished=True`
//!    (`BENCH_DEADLINE` from the operator's start, default `10m`);
//! 5. counts SSM calls for 5 s more (0 expected), then stops the operator (SIGTERM, exit 0).
//!
//! Variants (`BENCH_VARIANT`, default `all`, which runs these seven in this order, then the two
//! `Command` variants below):
//! - `plain`;
//! - `throttled`: the simulator answers `ThrottlingException` above `BENCH_RATE_LIMIT`
//!   requests per second over all operations (default 20; token bucket, burst = the rate);
//! - `push`: an SQS simulator gets the EventBridge events of every status change the
//!   timelines make (connected before the commands are added, since their events are
//!   scheduled then), and the operator runs with `--sqs-queue-url` on it
//!   (`AWS_ENDPOINT_URL_SQS`), otherwise defaults (backstop 30 s);
//! - `push-lossy`: the same, with 20 % of the events dropped (dice seeded by `BENCH_SEED`);
//! - `arrival`, `arrival-push`, `arrival-push-lossy` (issue 19): resources arrive while the
//!   fleet runs, as pipelines and `Command`s create them. Phase 2 is skipped; the timelines
//!   start at the send (no lead) and 10 % fail; once the operator answers `/readyz` the N
//!   resources are created in a seeded random order at an even pace over `BENCH_ARRIVAL_OVER`
//!   (default `55s`, about 180/s for 10,000), so about half are created after their node
//!   finished. Lag counts from the later of SSM's terminal state and the creation, and is also
//!   printed apart for the two groups. Polling, push, and push with 20 % dropped, as above.
//!
//! Each variant gets a fresh API server, simulator(s) and operator.
//!
//! `BENCH_VARIANT=command` and `BENCH_VARIANT=command-two-step` (both also in `all`) run
//! instead the `Command` workload of `benches/fleet/command.rs` (issue 18): one `Command`
//! sent by the operator (`--send-commands`), its targets resolving to `BENCH_NODES` nodes
//! (default 5,000) listed over `BENCH_LISTED_OVER` (default `30s`), each running
//! `BENCH_RUN_MIN`..`BENCH_RUN_MAX` (3 s to 5 s), every tenth failing, with a one-step
//! document or a two-step one; printed: child creation delay after SSM lists a node, child
//! status lag, the `Command`'s `Finished` after the last node, API writes per child (counted
//! by kube-apiserver), SSM calls per node, peak RSS, each next to the issue's target.
//!
//! `BENCH_VARIANT=churn` runs instead the lifecycle churn of `benches/lifecycle/churn.rs`
//! (50,000 invocations created, finished and expired over ten minutes; see that module), and
//! every fleet variant also prints its etcd footprint (bytes per stored `CommandInvocation`).
//!
//! Printed for each variant, as figures, never as a verdict on speed:
//! - SSM calls by operation and in all (the simulator's counters, so SDK retries count),
//!   throttled answers, and the operator's own count by outcome;
//! - the same timelines served to a per-invocation waiter polling GetCommandInvocation every
//!   5 s from the send (at 0, 5, 10, ... s until it sees the terminal state at lead + T:
//!   1 + ceil((lead + T) / 5 s) calls, lag = that poll − (lead + T)): its calls, lag
//!   p50/p99, and waiter calls / operator calls;
//! - status lag after SSM's terminal state = when the watch first saw `Finished=True` − the
//!   terminal time, p50/p90/p99/max (both instants in this process's monotonic clock, the simulator's too);
//! - status writes and Events per resource (operator metrics), resources whose final status
//!   differs from the script (must be 0);
//! - operator CPU seconds (`/proc/<pid>/stat`, whole run) and peak RSS (`VmHWM`), CPU of
//!   kube-apiserver, etcd, kube-controller-manager (when the assets have it) and this process
//!   from the operator's start to the end;
//! - kube-apiserver's requests from the operator's start to the end, by verb, resource and
//!   code (`apiserver_request_total`; the bench's creates and watch included), and the mean
//!   time it took to serve the three most frequent kinds (`apiserver_request_duration_seconds`);
//! - the arrival variants also: per 5 s, the final statuses that fell due and those the
//!   watch saw Finished, with the backlog (where the lag builds);
//! - SSM calls and status writes in the 5 s after all were Finished;
//! - push variants also: SSM calls per invocation (the issue's push target: ≤ 1.2 with lag
//!   p99 ≤ 1.5 s), the SQS simulator's events (published, dropped) and messages (sent,
//!   received, deleted, left), its calls, the operator's `ssm_operator_push_messages_total`
//!   by kind, and the lag of invocations whose terminal event reached the queue apart from
//!   those whose event was dropped (bounded by the backstop).
//!
//! The bench exits 1 only if something broke (set-up failed, the deadline passed, a wrong
//! final status, the operator died or did not exit 0 on SIGTERM), after printing what it had.
//!
//! ```console
//! $ make bench                                                    # 20 × 500, all variants
//! $ BENCH_COMMANDS=2 BENCH_INSTANCES=50 BENCH_VARIANT=push make bench
//! $ BENCH_VARIANT=plain BENCH_OPERATOR_ENV=MALLOC_ARENA_MAX=2 make bench
//! $ BENCH_VARIANT=command BENCH_NODES=300 cargo bench --profile dev --bench scale   # quick
//! $ BENCH_OPERATOR_LOG=/tmp/op.log RUST_LOG=info,ssm_operator=debug make bench   # keep the log
//! ```

use std::collections::{BTreeMap, HashSet};
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
use ssm_sim::{Command, Invocation, Plugin, Simulator, SqsSimulator};
use testbed::TestCluster;
use tokio::sync::{mpsc, oneshot};

#[path = "fleet/command.rs"]
mod fleet;
#[path = "lifecycle/churn.rs"]
mod lifecycle;

/// The operator binary, built by cargo for this bench.
const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_ssm-operator");
const NAMESPACE: &str = "bench-scale";
const PLUGIN: &str = "aws:runShellScript";
/// Creates in flight at once.
const CREATE_CONCURRENCY: usize = 64;
/// Share of invocations that fail, in percent.
const FAILED_PERCENT: f64 = 5.0;
/// The same in the arrival variants (issue 19's workload).
const ARRIVAL_FAILED_PERCENT: f64 = 10.0;
/// The arrival variants wait this long at most for the operator's `/readyz` before creating.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The comparison waiter's poll interval.
const WAITER_INTERVAL: Duration = Duration::from_secs(5);
/// Watched after all are Finished, for SSM calls that should not happen.
const QUIET_WINDOW: Duration = Duration::from_secs(5);
/// Status writes after all Finished are counted from this long after it.
const WRITE_SETTLE: Duration = Duration::from_millis(250);
/// How often a progress line is printed while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// Share of SSM events the `push-lossy` variant's queue drops.
const LOSSY_DROP_RATIO: f64 = 0.2;
/// The operator's `--push-backstop` unless `BENCH_OPERATOR_ARGS` gives one.
const DEFAULT_BACKSTOP: &str = "30s";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    Throttled,
    Push,
    PushLossy,
    /// Resources created while the fleet runs (the operator already running), polling.
    Arrival,
    /// The same, with push.
    ArrivalPush,
    /// The same, with push and 20 % of events dropped.
    ArrivalPushLossy,
}

impl Variant {
    const ALL: [Variant; 7] = [
        Variant::Plain,
        Variant::Throttled,
        Variant::Push,
        Variant::PushLossy,
        Variant::Arrival,
        Variant::ArrivalPush,
        Variant::ArrivalPushLossy,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Throttled => "throttled",
            Variant::Push => "push",
            Variant::PushLossy => "push-lossy",
            Variant::Arrival => "arrival",
            Variant::ArrivalPush => "arrival-push",
            Variant::ArrivalPushLossy => "arrival-push-lossy",
        }
    }

    /// Whether the operator consumes the SQS simulator's events.
    fn push(self) -> bool {
        matches!(
            self,
            Variant::Push | Variant::PushLossy | Variant::ArrivalPush | Variant::ArrivalPushLossy
        )
    }

    /// The share of events the queue drops.
    fn drop_ratio(self) -> f64 {
        if matches!(self, Variant::PushLossy | Variant::ArrivalPushLossy) {
            LOSSY_DROP_RATIO
        } else {
            0.0
        }
    }

    /// Whether resources are created while the fleet runs instead of all first.
    fn arrival(self) -> bool {
        matches!(
            self,
            Variant::Arrival | Variant::ArrivalPush | Variant::ArrivalPushLossy
        )
    }

    /// Share of invocations that fail, in percent.
    fn failed_percent(self) -> f64 {
        if self.arrival() {
            ARRIVAL_FAILED_PERCENT
        } else {
            FAILED_PERCENT
        }
    }
}

/// What the environment asks for.
#[derive(Debug, Clone)]
struct Config {
    commands: usize,
    instances: usize,
    spread: Duration,
    /// `BENCH_LEAD`: how long every node stays Pending after the send (0 in the arrival
    /// variants: their timelines start at the send).
    lead: Duration,
    /// `BENCH_ARRIVAL_OVER`: the arrival variants create the N resources at an even pace over
    /// this long, from the operator's readiness.
    arrival_over: Duration,
    variants: Vec<Variant>,
    rate_limit: f64,
    deadline: Duration,
    seed: u64,
    operator_args: Vec<String>,
    /// `BENCH_OPERATOR_ENV`: set in the operator's environment only.
    operator_env: Vec<(String, String)>,
    operator_log: Option<PathBuf>,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        if std::env::var_os("BENCH_INVOCATIONS").is_some() {
            return Err("BENCH_INVOCATIONS is gone: the bench runs a fleet of \
                 BENCH_COMMANDS × BENCH_INSTANCES (e.g. BENCH_COMMANDS=1 BENCH_INSTANCES=1000)"
                .into());
        }
        let variants = match env_or("BENCH_VARIANT", "all").as_str() {
            "all" => Variant::ALL.to_vec(),
            other => match Variant::ALL.into_iter().find(|v| v.name() == other) {
                Some(variant) => vec![variant],
                None => {
                    return Err(format!(
                        "BENCH_VARIANT must be plain, throttled, push, push-lossy, arrival, \
                         arrival-push, arrival-push-lossy, command, command-two-step, all or \
                         churn, got {other:?}"
                    ))
                }
            },
        };
        let rate_limit = match env_or("BENCH_RATE_LIMIT", "20").parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => rate,
            _ => return Err("BENCH_RATE_LIMIT must be a positive number".into()),
        };
        Ok(Config {
            commands: positive("BENCH_COMMANDS", 20)?,
            instances: positive("BENCH_INSTANCES", 500)?,
            spread: duration("BENCH_SPREAD", "60s")?,
            lead: duration("BENCH_LEAD", "5s")?,
            arrival_over: duration("BENCH_ARRIVAL_OVER", "55s")?,
            variants,
            rate_limit,
            deadline: duration("BENCH_DEADLINE", "10m")?,
            seed: env_or("BENCH_SEED", "1")
                .parse()
                .map_err(|_| "BENCH_SEED must be an unsigned integer".to_string())?,
            operator_args: env_or("BENCH_OPERATOR_ARGS", "")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            operator_env: operator_env(&env_or("BENCH_OPERATOR_ENV", ""))?,
            operator_log: std::env::var_os("BENCH_OPERATOR_LOG").map(PathBuf::from),
        })
    }

    /// The operator's `--push-backstop`: the last one in `BENCH_OPERATOR_ARGS`, else its
    /// default.
    fn backstop(&self) -> String {
        let mut backstop = DEFAULT_BACKSTOP.to_string();
        let mut args = self.operator_args.iter();
        while let Some(arg) = args.next() {
            if let Some(value) = arg.strip_prefix("--push-backstop=") {
                backstop = value.to_string();
            } else if arg == "--push-backstop" {
                if let Some(value) = args.next() {
                    backstop.clone_from(value);
                }
            }
        }
        backstop
    }

    fn n(&self) -> usize {
        self.commands * self.instances
    }

    /// How long nodes stay Pending after the send in `variant`.
    fn lead(&self, variant: Variant) -> Duration {
        if variant.arrival() {
            Duration::ZERO
        } else {
            self.lead
        }
    }
}

/// `, operator environment K=V K2=V2` for a variant's header (empty without any).
fn operator_env_text(env: &[(String, String)]) -> String {
    if env.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(", operator environment {}", pairs.join(" "))
}

/// `K=V,K2=V2` (blank: none) as pairs, for the operator's environment only.
fn operator_env(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            _ => Err(format!(
                "BENCH_OPERATOR_ENV must be comma-separated K=V pairs, got {pair:?}"
            )),
        })
        .collect()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map_or_else(|| default.to_string(), |v| v.trim().to_string())
}

fn positive(name: &str, default: usize) -> Result<usize, String> {
    match env_or(name, &default.to_string()).parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name} must be a positive integer")),
    }
}

fn duration(name: &str, default: &str) -> Result<Duration, String> {
    let text = env_or(name, default);
    humantime::parse_duration(&text)
        .map_err(|e| format!("{name} must be a duration like 60s or 2m, got {text:?}: {e}"))
}

fn main() -> ExitCode {
    ssm_operator::install_crypto_provider();
    let selected = env_or("BENCH_VARIANT", "all");
    if selected == "churn" {
        return lifecycle::main();
    }
    // The Command variants alone, or after the fleet variants with `all`.
    let command_variants = match fleet::Variant::named(&selected) {
        Some(variant) => vec![variant],
        None if selected == "all" => fleet::Variant::ALL.to_vec(),
        None => Vec::new(),
    };
    let only_commands = selected != "all" && !command_variants.is_empty();
    let config = if only_commands {
        None
    } else {
        match Config::from_env() {
            Ok(config) => Some(config),
            Err(message) => {
                eprintln!("bench scale: {message}");
                return ExitCode::FAILURE;
            }
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut summaries = Vec::new();
    let mut failed = false;
    let mut record = |name: &str, result: Result<String, String>| match result {
        Ok(summary) => summaries.push(summary),
        Err(message) => {
            eprintln!("bench scale: variant {name}: FAILED: {message}");
            summaries.push(format!("{name}: FAILED ({message})"));
            failed = true;
        }
    };
    if let Some(config) = &config {
        for &variant in &config.variants {
            record(variant.name(), runtime.block_on(run(config, variant)));
        }
    }
    let results = runtime.block_on(fleet::run_all(&command_variants));
    for (result, variant) in results.into_iter().zip(&command_variants) {
        record(variant.name(), result);
    }
    println!();
    for summary in summaries {
        println!("bench scale: {summary}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One invocation's script.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    in_progress: Duration,
    terminal: Duration,
    failed: bool,
}

impl Timeline {
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

/// The timelines of all N invocations, index = command × instances + instance.
fn timelines(config: &Config, variant: Variant) -> Vec<Timeline> {
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let spread_ms = u64::try_from(config.spread.as_millis()).unwrap_or(u64::MAX);
    (0..config.n())
        .map(|_| {
            let terminal = rng.u64(0..=spread_ms);
            Timeline {
                in_progress: Duration::from_millis(rng.u64(0..=terminal)),
                terminal: Duration::from_millis(terminal),
                failed: rng.f64() * 100.0 < variant.failed_percent(),
            }
        })
        .collect()
}

/// Command ids are this and `c` in 12 hex digits.
const COMMAND_ID_PREFIX: &str = "5e3f1a2b-7c4d-4e8f-9a0b-";

/// A UUID-shaped command id for command `c`.
fn command_id(c: usize) -> String {
    format!("{COMMAND_ID_PREFIX}{c:012x}")
}

/// `i-` and 17 hex digits, unique per instance.
fn instance_id(i: usize) -> String {
    format!("i-{i:017x}")
}

/// The resource name of invocation `k`.
fn name(config: &Config, k: usize) -> String {
    format!(
        "bench-c{:03}-i{:05}",
        k / config.instances,
        k % config.instances
    )
}

/// Parses a name made by [`name`] back into its index.
fn index_of(config: &Config, name: &str) -> Option<usize> {
    let rest = name.strip_prefix("bench-c")?;
    let (c, i) = rest.split_once("-i")?;
    let (c, i) = (c.parse::<usize>().ok()?, i.parse::<usize>().ok()?);
    (c < config.commands && i < config.instances).then_some(c * config.instances + i)
}

/// The simulator's commands for these timelines.
fn scripted_commands(config: &Config, variant: Variant, timelines: &[Timeline]) -> Vec<Command> {
    let lead = config.lead(variant);
    (0..config.commands)
        .map(|c| {
            let mut command = Command::new(command_id(c)).comment(format!("bench fleet #{c}"));
            for i in 0..config.instances {
                let t = timelines[c * config.instances + i];
                let instance = instance_id(i);
                let (in_progress, terminal) = (lead + t.in_progress, lead + t.terminal);
                let plugin = if t.failed {
                    Plugin::failing_at(PLUGIN, in_progress, terminal, 1)
                        .stderr(format!("patch failed on {instance}: exit status 1\n"))
                } else {
                    Plugin::succeeding_at(PLUGIN, in_progress, terminal)
                };
                command = command.invocation(
                    Invocation::new(&instance)
                        .plugin(plugin.stdout(format!("patching {instance}\n"))),
                );
            }
            command
        })
        .collect()
}

/// What the watch saw first for one resource: when it was first `Finished=True`, and its SSM
/// status and response code then.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    status: Option<String>,
    code: Option<i32>,
}

/// One run of a variant: the phases of the module doc, in order. Returns the variant's
/// summary line, or what broke (after printing the figures it had).
async fn run(config: &Config, variant: Variant) -> Result<String, String> {
    announce(config, variant);
    // 1. The API server and the SSM simulator.
    let testbed = start_testbed().await?;
    let etcd_before = lifecycle::etcd_in_use_compacted(&testbed.cluster).await;
    let timelines = timelines(config, variant);
    // 2. All resources first, the operator not running yet (the arrival variants create
    //    them in phase 4, while the fleet runs).
    if !variant.arrival() {
        create_invocations(config, &testbed.api).await?;
    }
    // 3. The bench's watch, then the commands sent.
    let mut sent = watch_and_send(config, variant, &testbed, &timelines).await?;
    // 4. The operator, right after the send, followed until every resource is Finished; the
    //    arrival variants create the resources meanwhile, from the operator's readiness on.
    let client = testbed.api.clone().into_client();
    let requests_before = fleet::apiserver_metrics(&client).await.ok();
    let mut running = start_operator(config, variant, &testbed, &sent)?;
    let arrivals = if variant.arrival() {
        Some(start_arrivals(config, &testbed.api, &running).await?)
    } else {
        None
    };
    let followed = follow_until_finished(config, &testbed.sim, &mut sent, &mut running).await;
    let created = match arrivals {
        Some(task) => task
            .await
            .map_err(|e| format!("the creating task failed: {e}"))??,
        None => Vec::new(),
    };
    // 5. The quiet window; the figures; then the operator stopped and the verdict.
    let end = quiet_window(&testbed.sim, &running, &followed).await;
    let requests_after = fleet::apiserver_metrics(&client).await.ok();
    lifecycle::print_footprint(&testbed.cluster, etcd_before, Some(config.n())).await;
    if let (Some(before), Some(after)) = (&requests_before, &requests_after) {
        row("kube-apiserver requests", apiserver_requests(before, after));
        row(
            "kube-apiserver time per request",
            apiserver_latency(before, after),
        );
    }
    let figures = print_figures(
        config, variant, &timelines, &created, &sent, &running, &followed, &end,
    );
    stop_and_conclude(config, testbed, sent, running, followed, figures).await
}

/// The variant's header: the workload and what the operator runs with.
fn announce(config: &Config, variant: Variant) {
    let n = config.n();
    println!();
    println!(
        "== bench scale, variant {}: {} commands × {} instances = {n} CommandInvocations{}, \
         nodes Pending for {:?} after the send, then terminal times over {:?} ({} % failing), \
         operator default flags{}{}{}{} ==",
        variant.name(),
        config.commands,
        config.instances,
        if variant.arrival() {
            format!(
                " created in a random order at an even pace over {:?} from the operator's \
                 readiness, while the fleet runs",
                config.arrival_over
            )
        } else {
            " created before the operator starts".to_string()
        },
        config.lead(variant),
        config.spread,
        variant.failed_percent(),
        if variant == Variant::Throttled {
            format!(", SSM throttles above {} requests/s", config.rate_limit)
        } else {
            String::new()
        },
        match variant {
            Variant::Push | Variant::ArrivalPush => {
                " + --sqs-queue-url (every SSM event published)".to_string()
            }
            Variant::PushLossy | Variant::ArrivalPushLossy => format!(
                " + --sqs-queue-url ({:.0} % of SSM events dropped, seed {})",
                variant.drop_ratio() * 100.0,
                config.seed
            ),
            Variant::Plain | Variant::Throttled | Variant::Arrival => String::new(),
        },
        if config.operator_args.is_empty() {
            String::new()
        } else {
            format!(" + {}", config.operator_args.join(" "))
        },
        operator_env_text(&config.operator_env),
    );
}

/// Phase 1's servers. Fields drop in this order: the simulator before the API server.
struct Testbed {
    /// The SSM simulator, in this process.
    sim: Simulator,
    /// The CommandInvocations of the bench's namespace.
    api: Api<CommandInvocation>,
    /// etcd and kube-apiserver.
    cluster: TestCluster,
}

/// Phase 1: starts a real etcd + kube-apiserver, installs the shipped CRD and creates the
/// bench's namespace, then starts the SSM simulator in this process.
async fn start_testbed() -> Result<Testbed, String> {
    start_testbed_with(&[]).await
}

/// Like [`start_testbed`], with `flags` added to kube-apiserver's.
async fn start_testbed_with(apiserver_flags: &[&str]) -> Result<Testbed, String> {
    let cluster = TestCluster::start_with_apiserver_flags(apiserver_flags)
        .await
        .map_err(|e| format!("cannot start the test API server: {e}"))?;
    install_crd(&cluster, "commandinvocation").await?;
    let client = cluster.client().await.map_err(|e| e.to_string())?;
    create_namespace(&client).await?;
    let api: Api<CommandInvocation> = Api::namespaced(client, NAMESPACE);
    let sim = Simulator::start().await.map_err(|e| e.to_string())?;
    Ok(Testbed { sim, api, cluster })
}

/// Phase 2: creates all N CommandInvocations (`CREATE_CONCURRENCY` in flight) and prints how
/// long that took.
async fn create_invocations(config: &Config, api: &Api<CommandInvocation>) -> Result<(), String> {
    let n = config.n();
    let first_create = Instant::now();
    futures::stream::iter(0..n)
        .map(|k| {
            let api = api.clone();
            let spec = CommandInvocationSpec {
                ttl_seconds_after_finished: None,
                command_id: command_id(k / config.instances),
                instance_id: instance_id(k % config.instances),
                plugin_name: None,
                region: None,
            };
            let name = name(config, k);
            async move {
                api.create(&PostParams::default(), &CommandInvocation::new(&name, spec))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("create {name}: {e}"))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let creation = first_create.elapsed();
    row(
        format!("created ({CREATE_CONCURRENCY} in flight)"),
        format!(
            "{n} in {:.1} s ({:.0}/s)",
            secs(creation),
            n as f64 / creation.as_secs_f64()
        ),
    );
    Ok(())
}

/// Phase 3's outcome: when the commands were sent, the push variants' queue, and the bench's
/// watch.
struct Sent {
    /// When the simulator got the commands.
    at: Instant,
    /// When the timelines start: `at` + `BENCH_LEAD`.
    t0: Instant,
    /// The SQS simulator the push variants' SSM events go to.
    sqs: Option<SqsSimulator>,
    /// Each resource the first time the watch sees it `Finished=True` (see [`watch_finished`]).
    finished: mpsc::UnboundedReceiver<(String, Instant, Option<String>, Option<i32>)>,
    /// The watch's task, aborted when following ends.
    watch: tokio::task::JoinHandle<()>,
}

/// Phase 3: starts the bench's watch and waits for its initial list, then sends the commands
/// (adds them to the simulator), the push variants' queue connected first.
async fn watch_and_send(
    config: &Config,
    variant: Variant,
    testbed: &Testbed,
    timelines: &[Timeline],
) -> Result<Sent, String> {
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let (synced_tx, synced_rx) = oneshot::channel();
    let watch = tokio::spawn(watch_finished(testbed.api.clone(), finished_tx, synced_tx));
    synced_rx
        .await
        .map_err(|_| "the bench's watch ended before it synced".to_string())?;

    // The commands are sent here, then the operator starts; the timelines start `lead` later.
    // Events are scheduled when a command is added, so the queue is connected (and its
    // faults set) first.
    let sim = &testbed.sim;
    if variant == Variant::Throttled {
        sim.set_rate_limit(Some(config.rate_limit));
    }
    let sqs = if variant.push() {
        let sqs = SqsSimulator::start().await.map_err(|e| e.to_string())?;
        sqs.set_seed(config.seed);
        sqs.drop_ratio(variant.drop_ratio());
        sim.publish_events_to(&sqs);
        Some(sqs)
    } else {
        None
    };
    let commands = scripted_commands(config, variant, timelines);
    let at = sim.add_commands(commands);
    Ok(Sent {
        at,
        t0: at + config.lead(variant),
        sqs,
        finished: finished_rx,
        watch,
    })
}

/// The arrival variants' creating task: when each resource (index as in the timelines) was
/// created, or what failed.
type Arrivals = tokio::task::JoinHandle<Result<Vec<Option<Instant>>, String>>;

/// Phase 4 of the arrival variants: waits for the operator's `/readyz`, then creates the N
/// resources in a seeded random order at an even pace over `BENCH_ARRIVAL_OVER` (as pipelines
/// and `Command`s create them while the fleet runs: some after their node finished).
async fn start_arrivals(
    config: &Config,
    api: &Api<CommandInvocation>,
    running: &Running,
) -> Result<Arrivals, String> {
    let ready_by = Instant::now() + READY_TIMEOUT;
    while !running.operator.ready().await {
        if Instant::now() >= ready_by {
            return Err(format!(
                "the operator was not ready within {READY_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = config.n();
    let mut order: Vec<usize> = (0..n).collect();
    fastrand::Rng::with_seed(config.seed ^ 0x5eed_a441).shuffle(&mut order);
    let (api, config) = (api.clone(), config.clone());
    let start = tokio::time::Instant::now();
    Ok(tokio::spawn(async move {
        let mut created = vec![None; n];
        let mut creates = futures::stream::iter(order.into_iter().enumerate())
            .map(|(slot, k)| {
                let api = api.clone();
                let at = start + config.arrival_over.mul_f64(slot as f64 / n as f64);
                let name = name(&config, k);
                let spec = CommandInvocationSpec {
                    ttl_seconds_after_finished: None,
                    command_id: command_id(k / config.instances),
                    instance_id: instance_id(k % config.instances),
                    plugin_name: None,
                    region: None,
                };
                async move {
                    tokio::time::sleep_until(at).await;
                    api.create(&PostParams::default(), &CommandInvocation::new(&name, spec))
                        .await
                        .map(|_| (k, Instant::now()))
                        .map_err(|e| format!("create {name}: {e}"))
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY);
        while let Some(done) = creates.next().await {
            let (k, at) = done?;
            created[k] = Some(at);
        }
        Ok(created)
    }))
}

/// The operator as phase 4 started it, and what its CPU figures count from.
struct Running {
    operator: Operator,
    /// When it was started: the deadline and the CPU figures count from here.
    started: Instant,
    /// kube-apiserver, etcd, kube-controller-manager (when it runs) and this process: what
    /// each is, and its pid.
    others: Vec<(&'static str, u32)>,
    /// Their CPU seconds at `started`.
    cpu_before: Vec<Option<f64>>,
    /// Holds the operator's log unless `BENCH_OPERATOR_LOG` names one. Fields drop in order,
    /// so the operator is killed before this is removed.
    _scratch: tempfile::TempDir,
}

/// Phase 4, start: the real `ssm-operator run` with its default flags, plus the push
/// variants' queue and `BENCH_OPERATOR_ARGS` / `BENCH_OPERATOR_ENV`.
fn start_operator(
    config: &Config,
    variant: Variant,
    testbed: &Testbed,
    sent: &Sent,
) -> Result<Running, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let log = match &config.operator_log {
        Some(path) if config.variants.len() > 1 => {
            let mut path = path.clone().into_os_string();
            path.push(format!(".{}", variant.name()));
            PathBuf::from(path)
        }
        Some(path) => path.clone(),
        None => scratch.path().join("operator.log"),
    };
    let mut operator_args = Vec::new();
    let mut operator_env = Vec::new();
    if let Some(sqs) = &sent.sqs {
        operator_args.extend(["--sqs-queue-url".to_string(), sqs.queue_url()]);
        operator_env.push(("AWS_ENDPOINT_URL_SQS".to_string(), sqs.endpoint()));
    }
    operator_args.extend(config.operator_args.iter().cloned());
    operator_env.extend(config.operator_env.iter().cloned());
    let operator = Operator::start(
        &testbed.cluster,
        &testbed.sim.endpoint(),
        &log,
        &operator_args,
        &operator_env,
    )?;
    let started = Instant::now();
    let others = cpu_accounts(&testbed.cluster, "bench (simulator, watch)");
    let cpu_before = others.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    Ok(Running {
        operator,
        started,
        others,
        cpu_before,
        _scratch: scratch,
    })
}

/// Phase 4's outcome: what the watch saw, and why and when following ended.
struct Followed {
    /// Per resource (index as in the timelines): what the watch saw first.
    seen: Vec<Option<Seen>>,
    /// How many of `seen` are set.
    count: usize,
    /// When the operator's `/readyz` first answered 200.
    ready_at: Option<Instant>,
    /// When following ended: when all were Finished, unless `broken`.
    at: Instant,
    /// The highest SSM call rate over windows of about a second.
    peak_rate: f64,
    /// Why following ended before all were Finished.
    broken: Option<String>,
}

/// Phase 4, follow: the watch until every resource is `Finished=True` (or the watch ends, the
/// operator exits, or `BENCH_DEADLINE` passes), with a progress line every `PROGRESS_EVERY`;
/// then stops the watch.
async fn follow_until_finished(
    config: &Config,
    sim: &Simulator,
    sent: &mut Sent,
    running: &mut Running,
) -> Followed {
    let n = config.n();
    let operator_start = running.started;
    let operator = &mut running.operator;
    let deadline = tokio::time::Instant::from_std(operator_start + config.deadline);
    let mut seen: Vec<Option<Seen>> = vec![None; n];
    let mut count = 0;
    let mut ready_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut next_progress = operator_start + PROGRESS_EVERY;
    let mut rate = PeakRate::new(operator_start, sim.total_calls());
    let mut broken: Option<String> = None;
    while count < n {
        tokio::select! {
            got = sent.finished.recv() => match got {
                Some((name, at, status, code)) => {
                    if let Some(k) = index_of(config, &name) {
                        if seen[k].is_none() {
                            seen[k] = Some(Seen { at, status, code });
                            count += 1;
                        }
                    }
                }
                None => {
                    broken = Some("the bench's watch ended".into());
                    break;
                }
            },
            _ = tick.tick() => {
                if let Some(status) = operator.exited() {
                    broken = Some(format!("the operator exited early ({status})"));
                    break;
                }
                if ready_at.is_none() && operator.ready().await {
                    ready_at = Some(Instant::now());
                }
                let now = Instant::now();
                rate.sample(now, sim.total_calls());
                if now >= next_progress {
                    next_progress = now + PROGRESS_EVERY;
                    println!(
                        "  … {:>5.0} s after the commands were sent: {count} of {n} Finished, \
                         {} SSM calls, {} throttled",
                        secs(now - sent.at),
                        sim.total_calls(),
                        sim.throttled()
                    );
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                broken = Some(format!(
                    "only {count} of {n} Finished within {:?} of the operator's start",
                    config.deadline
                ));
                break;
            }
        }
    }
    let all_finished = Instant::now();
    sent.watch.abort();
    Followed {
        seen,
        count,
        ready_at,
        at: all_finished,
        peak_rate: rate.peak,
        broken,
    }
}

/// Counters read at the end of the run (phase 5).
struct AtEnd {
    /// The simulator's counters when following ended.
    ssm_at_finish: SsmCounts,
    /// The operator's metrics `WRITE_SETTLE` after all were Finished (none if something broke).
    metrics_at_finish: Option<String>,
    /// The simulator's counters after the quiet window.
    ssm: SsmCounts,
    /// The operator's metrics at the end (empty if it did not answer).
    metrics: String,
    /// The operator's CPU seconds, whole run.
    operator_cpu: Option<f64>,
    /// The operator's `VmHWM` in KiB.
    peak_rss: Option<u64>,
    /// The other processes' CPU from the operator's start, e.g. `etcd 1.2 s`.
    cpu_others: Vec<String>,
}

/// Phase 5, quiet window: the SSM counters when all were Finished and `QUIET_WINDOW` later
/// (no wait if something broke), then the operator's metrics, CPU and peak RSS, and the
/// other processes' CPU.
async fn quiet_window(sim: &Simulator, running: &Running, followed: &Followed) -> AtEnd {
    let operator = &running.operator;
    let ssm_at_finish = SsmCounts::read(sim);
    let metrics_at_finish = if followed.broken.is_none() {
        // The operator counts a status write once its patch returns, which can be just
        // after the watch delivered the change.
        tokio::time::sleep(WRITE_SETTLE).await;
        let metrics = operator.metrics().await;
        tokio::time::sleep(QUIET_WINDOW - WRITE_SETTLE).await;
        metrics
    } else {
        None
    };
    let ssm = SsmCounts::read(sim);
    let metrics = operator.metrics().await.unwrap_or_default();
    let operator_cpu = operator.pid().and_then(cpu_seconds);
    let peak_rss = operator.peak_rss();
    let cpu_others = cpu_used(&running.others, &running.cpu_before);
    AtEnd {
        ssm_at_finish,
        metrics_at_finish,
        ssm,
        metrics,
        operator_cpu,
        peak_rss,
        cpu_others,
    }
}

/// What the verdict needs from the figures.
struct Figures {
    /// Resources whose final status differs from the script.
    wrong: Vec<String>,
    /// The variant's line of the closing summary.
    summary: String,
}

/// The figures (the module doc's "Printed for each variant"), as rows in a fixed order; also
/// makes the variant's summary line.
#[allow(clippy::too_many_arguments)]
fn print_figures(
    config: &Config,
    variant: Variant,
    timelines: &[Timeline],
    created: &[Option<Instant>],
    sent: &Sent,
    running: &Running,
    followed: &Followed,
    end: &AtEnd,
) -> Figures {
    let n = config.n();
    let lead = config.lead(variant);
    timing_figures(lead, timelines, sent, followed);
    ssm_figures(config, variant, running.started, followed, end);
    let operator_calls = end.ssm_at_finish.total;
    let waiter_calls = waiter_figures(config, lead, timelines, operator_calls);
    // Lag counts from SSM's terminal state, or from the resource's creation if that came later.
    let from: Vec<Instant> = timelines
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let terminal = sent.t0 + t.terminal;
            created
                .get(k)
                .copied()
                .flatten()
                .map_or(terminal, |c| c.max(terminal))
        })
        .collect();
    if !created.is_empty() {
        arrival_figures(timelines, created, &followed.seen, &from, sent.t0);
    }
    let Lags { lags, wrong } = lag_figures(config, timelines, &followed.seen, &from, sent.t0);
    let push_summary = match &sent.sqs {
        Some(sqs) => push_figures(
            config,
            variant,
            sqs,
            &end.metrics,
            timelines,
            &followed.seen,
            &from,
            operator_calls,
        ),
        None => String::new(),
    };
    let writes = operator_figures(n, end);
    let summary = format!(
        "{}: N={n} all Finished {:.1} s after the timelines started; {operator_calls} SSM calls \
         ({:.2}/invocation, {} throttled), 5 s waiter {waiter_calls} ({:.1}× the operator); \
         lag p50 {:.2} s p99 {:.2} s max {:.2} s; {:.2} writes/resource; operator CPU {}, \
         peak RSS {}{push_summary}",
        variant.name(),
        secs(followed.at - sent.t0),
        operator_calls as f64 / n as f64,
        end.ssm_at_finish.throttled,
        waiter_calls as f64 / operator_calls.max(1) as f64,
        secs(quantile(&lags, 50.0)),
        secs(quantile(&lags, 99.0)),
        secs(quantile(&lags, 100.0)),
        writes / n as f64,
        end.operator_cpu.map_or("?".into(), |s| format!("{s:.1} s")),
        end.peak_rss
            .map_or("?".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)),
    );
    Figures { wrong, summary }
}

/// When the operator was ready and when all were Finished.
fn timing_figures(lead: Duration, timelines: &[Timeline], sent: &Sent, followed: &Followed) {
    let n = timelines.len();
    let last_terminal = timelines
        .iter()
        .map(|t| t.terminal)
        .max()
        .unwrap_or_default();
    row(
        "operator ready (/readyz)",
        followed.ready_at.map_or("not seen".into(), |at| {
            format!(
                "{:.1} s after the commands were sent (their timelines start at {:.1} s)",
                secs(at - sent.at),
                secs(lead)
            )
        }),
    );
    row(
        "all Finished",
        if followed.broken.is_none() {
            format!(
                "{:.1} s after the timelines started (last SSM terminal state at {:.1} s)",
                secs(followed.at - sent.t0),
                secs(last_terminal)
            )
        } else {
            format!("no: {} of {n}", followed.count)
        },
    );
}

/// SSM calls by operation and in all, throttled answers, the operator's own count by outcome,
/// the call rate, and the operator's SSM budget if it has one.
fn ssm_figures(
    config: &Config,
    variant: Variant,
    operator_start: Instant,
    followed: &Followed,
    end: &AtEnd,
) {
    let n = config.n();
    let ssm_at_finish = &end.ssm_at_finish;
    let metrics = &end.metrics;
    let operator_calls = ssm_at_finish.total;
    row(
        "SSM calls (simulator)",
        format!(
            "{}; total {operator_calls} = {:.2} per invocation",
            ssm_at_finish.by_operation(),
            operator_calls as f64 / n as f64
        ),
    );
    row(
        "throttled (simulator)",
        format!(
            "{}{}",
            ssm_at_finish.throttled,
            if variant == Variant::Throttled {
                format!(
                    " = {:.1} % of calls (limit {} requests/s)",
                    percent(ssm_at_finish.throttled, operator_calls),
                    config.rate_limit
                )
            } else {
                String::new()
            }
        ),
    );
    row(
        "SSM calls (operator, by outcome)",
        by_label(metrics, "ssm_operator_ssm_calls_total", "outcome"),
    );
    row(
        "SSM call rate (simulator)",
        format!(
            "mean {:.1}/s from the operator's start, peak {:.1}/s (1 s windows)",
            operator_calls as f64 / followed.at.duration_since(operator_start).as_secs_f64(),
            followed.peak_rate
        ),
    );
    if metrics.contains("ssm_operator_ssm_rate_limit ") {
        row(
            "operator's SSM budget at the end",
            format!(
                "{:.1} calls/s",
                metric(metrics, "ssm_operator_ssm_rate_limit", None)
            ),
        );
    }
}

/// The per-invocation waiter on the same timelines: its calls and lag, and how its calls
/// compare with the operator's. Returns its calls.
fn waiter_figures(
    config: &Config,
    lead: Duration,
    timelines: &[Timeline],
    operator_calls: u64,
) -> u64 {
    let n = config.n();
    let (waiter_calls, mut waiter_lags) = waiter(timelines, lead);
    waiter_lags.sort();
    row(
        format!("{}s waiter, same timelines", WAITER_INTERVAL.as_secs()),
        format!(
            "{waiter_calls} GetCommandInvocation calls = {:.2} per invocation; lag p50 {:.2} s, p99 {:.2} s",
            waiter_calls as f64 / n as f64,
            secs(quantile(&waiter_lags, 50.0)),
            secs(quantile(&waiter_lags, 99.0)),
        ),
    );
    row(
        "waiter calls / operator calls",
        if operator_calls == 0 {
            "n/a (no operator calls)".to_string()
        } else {
            format!("{:.2}", waiter_calls as f64 / operator_calls as f64)
        },
    );
    waiter_calls
}

/// The status lags of the Finished resources, and which of them ended wrong.
struct Lags {
    /// Each Finished resource's status lag after its SSM terminal state, sorted.
    lags: Vec<Duration>,
    /// Resources whose final status differs from the script, described.
    wrong: Vec<String>,
}

/// The arrival variants' own figures: the pace of creation, how many resources were created
/// after their node finished, and the lag of each group.
fn arrival_figures(
    timelines: &[Timeline],
    created: &[Option<Instant>],
    seen: &[Option<Seen>],
    from: &[Instant],
    t0: Instant,
) {
    let times: Vec<Instant> = created.iter().flatten().copied().collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return;
    };
    row(
        "created while the fleet ran",
        format!(
            "{} from {:.1} s to {:.1} s after the send ({:.0}/s, {CREATE_CONCURRENCY} in flight at most)",
            times.len(),
            secs(*first - t0),
            secs(*last - t0),
            times.len() as f64 / (*last - *first).as_secs_f64().max(0.001)
        ),
    );
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for (k, t) in timelines.iter().enumerate() {
        let (Some(c), Some(s)) = (created[k], &seen[k]) else {
            continue;
        };
        let lag = s.at.saturating_duration_since(from[k]);
        if c > t0 + t.terminal {
            after.push(lag);
        } else {
            before.push(lag);
        }
    }
    before.sort();
    after.sort();
    row("lag, created before the end", spread(&before));
    row("lag, created after the end", spread(&after));
    row("finals due / seen, per 5 s", due_and_seen(seen, from, t0));
}

/// How much each kind of kube-apiserver request (`verb resource[/subresource]`, and ` code`
/// with `by_code`) added to the metric `name` between the `/metrics` texts `before` and
/// `after`.
fn apiserver_grown(
    before: &str,
    after: &str,
    name: &str,
    by_code: bool,
) -> std::collections::BTreeMap<String, f64> {
    let sums = |text: &str| {
        let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
        for (labels, value) in samples(text, name) {
            let subresource = fleet::label(labels, "subresource");
            let mut key = format!(
                "{} {}{}{}",
                fleet::label(labels, "verb"),
                fleet::label(labels, "resource"),
                if subresource.is_empty() { "" } else { "/" },
                subresource,
            );
            if by_code {
                key = format!("{key} {}", fleet::label(labels, "code"));
            }
            *sums.entry(key).or_default() += value;
        }
        sums
    };
    let before = sums(before);
    sums(after)
        .into_iter()
        .map(|(key, value)| {
            let grew = value - before.get(&key).copied().unwrap_or(0.0);
            (key, grew)
        })
        .collect()
}

/// kube-apiserver's requests from the operator's start to the end (everyone's: the bench's
/// creates and watch too), by verb, resource and code, the most first.
fn apiserver_requests(before: &str, after: &str) -> String {
    let mut grown: Vec<(String, f64)> =
        apiserver_grown(before, after, "apiserver_request_total", true)
            .into_iter()
            .filter(|(_, grew)| *grew >= 1.0)
            .collect();
    grown.sort_by(|a, b| b.1.total_cmp(&a.1));
    grown
        .iter()
        .take(10)
        .map(|(key, grew)| format!("{key} {grew:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long kube-apiserver took, on average, to serve each of the three most frequent kinds of
/// request from the operator's start to the end (`apiserver_request_duration_seconds`, from
/// the request's arrival to its answer): long when requests queue for its CPU.
fn apiserver_latency(before: &str, after: &str) -> String {
    let counts = apiserver_grown(
        before,
        after,
        "apiserver_request_duration_seconds_count",
        false,
    );
    let seconds = apiserver_grown(
        before,
        after,
        "apiserver_request_duration_seconds_sum",
        false,
    );
    let mut busiest: Vec<(&String, &f64)> = counts.iter().filter(|(_, n)| **n >= 1.0).collect();
    busiest.sort_by(|a, b| b.1.total_cmp(a.1));
    busiest
        .iter()
        .take(3)
        .map(|(key, count)| {
            let total = seconds.get(*key).copied().unwrap_or(0.0);
            format!("{key} {:.1} ms", total / **count * 1000.0)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the lag builds: per 5 s after the send, how many resources' final status fell due
/// (the later of their end and their creation: `from`) and how many the watch saw Finished,
/// with the backlog (due so far, not seen yet) at the window's end.
fn due_and_seen(seen: &[Option<Seen>], from: &[Instant], t0: Instant) -> String {
    const WINDOW: f64 = 5.0;
    let window = |at: Instant| (secs(at.saturating_duration_since(t0)) / WINDOW) as usize;
    let mut due: Vec<i64> = Vec::new();
    let mut finished: Vec<i64> = Vec::new();
    let count = |counts: &mut Vec<i64>, w: usize| {
        if counts.len() <= w {
            counts.resize(w + 1, 0);
        }
        counts[w] += 1;
    };
    for (k, s) in seen.iter().enumerate() {
        let Some(s) = s else { continue };
        count(&mut due, window(from[k]));
        count(&mut finished, window(s.at));
    }
    let windows = due.len().max(finished.len());
    let (mut due_so_far, mut seen_so_far) = (0, 0);
    let mut parts = Vec::new();
    for w in 0..windows {
        let (d, f) = (
            due.get(w).copied().unwrap_or(0),
            finished.get(w).copied().unwrap_or(0),
        );
        due_so_far += d;
        seen_so_far += f;
        parts.push(format!(
            "{}s {d}/{f} ({})",
            (w + 1) * WINDOW as usize,
            due_so_far - seen_so_far
        ));
    }
    parts.join(", ")
}

/// Status lag after SSM's terminal state (or the resource's creation, if later: `from`), the
/// slowest resources, and whether the final statuses are as scripted.
fn lag_figures(
    config: &Config,
    timelines: &[Timeline],
    seen: &[Option<Seen>],
    from: &[Instant],
    t0: Instant,
) -> Lags {
    let n = config.n();
    let mut lags: Vec<Duration> = Vec::with_capacity(n);
    let mut slowest: Vec<(Duration, usize)> = Vec::with_capacity(n);
    let mut wrong: Vec<String> = Vec::new();
    for (k, (t, s)) in timelines.iter().zip(seen).enumerate() {
        let Some(s) = s else { continue };
        lags.push(s.at.saturating_duration_since(from[k]));
        slowest.push((s.at.saturating_duration_since(from[k]), k));
        if s.status.as_deref() != Some(t.status()) || s.code != Some(t.code()) {
            wrong.push(format!(
                "{}: {:?}/{:?}, scripted {}/{}",
                name(config, k),
                s.status,
                s.code,
                t.status(),
                t.code()
            ));
        }
    }
    lags.sort();
    row(
        "status lag (from end|creation)",
        if lags.is_empty() {
            "none Finished".to_string()
        } else {
            format!(
                "p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s{}",
                secs(quantile(&lags, 50.0)),
                secs(quantile(&lags, 90.0)),
                secs(quantile(&lags, 99.0)),
                secs(quantile(&lags, 100.0)),
                if lags.len() < n {
                    format!(" (over the {} Finished)", lags.len())
                } else {
                    String::new()
                }
            )
        },
    );
    // Where to start reading the operator's log (`BENCH_OPERATOR_LOG`) when the tail is long.
    slowest.sort_by(|a, b| b.cmp(a));
    row(
        "slowest (lag; end, from)",
        slowest
            .iter()
            .take(3)
            .map(|(lag, k)| {
                format!(
                    "{} {:.2} s; {:.2} s, {:.2} s",
                    name(config, *k),
                    secs(*lag),
                    secs(timelines[*k].terminal),
                    secs(from[*k].saturating_duration_since(t0))
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    row(
        "final status as scripted",
        if wrong.is_empty() {
            format!("all {} Finished", lags.len())
        } else {
            format!(
                "{} WRONG, e.g. {}",
                wrong.len(),
                wrong[..wrong.len().min(3)].join("; ")
            )
        },
    );
    Lags { lags, wrong }
}

/// Status writes, Events and reconciles (operator metrics), the CPU and memory figures, and
/// what happened in the quiet window. Returns the status writes.
fn operator_figures(n: usize, end: &AtEnd) -> f64 {
    let metrics = &end.metrics;
    let writes = metric(metrics, "ssm_operator_status_writes_total", None);
    let events = metric(metrics, "ssm_operator_events_total", None);
    row(
        "status writes",
        format!("{writes:.0} = {:.2} per resource", writes / n as f64),
    );
    row(
        "Events",
        format!("{events:.0} = {:.2} per resource", events / n as f64),
    );
    row(
        "reconciles",
        format!(
            "{:.0}, {:.0} errors",
            metric(metrics, "ssm_operator_reconciles_total", None),
            metric(metrics, "ssm_operator_reconcile_errors_total", None)
        ),
    );
    row(
        "operator CPU, whole run",
        end.operator_cpu.map_or("?".into(), |s| format!("{s:.1} s")),
    );
    row(
        "operator peak RSS (VmHWM)",
        end.peak_rss
            .map_or("?".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)),
    );
    row("CPU from the operator's start", end.cpu_others.join(", "));
    if let Some(at_finish) = &end.metrics_at_finish {
        row(
            format!("{QUIET_WINDOW:?} after all Finished"),
            format!(
                "{} SSM calls, {:.0} status writes (from +{WRITE_SETTLE:?})",
                end.ssm.total - end.ssm_at_finish.total,
                writes - metric(at_finish, "ssm_operator_status_writes_total", None)
            ),
        );
    }
    writes
}

/// Phase 5, stop, and the verdict: if following broke off, what never finished and the
/// operator's log tail, and that error; else the operator stopped (SIGTERM, exit 0 expected)
/// and the servers shut down, then an error if a final status was wrong, else the summary.
async fn stop_and_conclude(
    config: &Config,
    testbed: Testbed,
    sent: Sent,
    mut running: Running,
    followed: Followed,
    figures: Figures,
) -> Result<String, String> {
    if let Some(problem) = followed.broken {
        report_missing(config, &testbed.api, &followed.seen).await;
        eprintln!(
            "--- operator log (tail) ---\n{}",
            running.operator.log_tail()
        );
        return Err(problem);
    }
    running.operator.stop().await?;
    if let Some(sqs) = sent.sqs {
        sqs.shutdown().await;
    }
    drop(testbed.sim);
    drop(testbed.cluster);
    if !figures.wrong.is_empty() {
        return Err(format!(
            "{} resources ended with a wrong status",
            figures.wrong.len()
        ));
    }
    Ok(figures.summary)
}

/// The push variants' own figures (printed as rows); returns a piece for the summary line.
#[allow(clippy::too_many_arguments)]
fn push_figures(
    config: &Config,
    variant: Variant,
    sqs: &SqsSimulator,
    metrics: &str,
    timelines: &[Timeline],
    seen: &[Option<Seen>],
    from: &[Instant],
    operator_calls: u64,
) -> String {
    let n = timelines.len();
    row(
        "SSM calls per invocation",
        format!(
            "{:.2} (issue target for push: ≤ 1.2, with lag p99 ≤ 1.5 s)",
            operator_calls as f64 / n as f64
        ),
    );
    let (published, dropped) = (sqs.events_published(), sqs.events_dropped());
    row(
        "SQS events (simulator)",
        format!(
            "published {published}, dropped {dropped} ({:.1} %), duplicated {}, reordered {}; \
             not yet due {}",
            percent(dropped, published),
            sqs.events_duplicated(),
            sqs.events_reordered(),
            sqs.pending_events()
        ),
    );
    row(
        "SQS messages (simulator)",
        format!(
            "sent {}, received {}, deleted {}; left {} visible, {} in flight",
            sqs.sent(),
            sqs.received(),
            sqs.deleted(),
            sqs.visible(),
            sqs.in_flight()
        ),
    );
    row(
        "SQS calls (simulator)",
        ["ReceiveMessage", "DeleteMessageBatch", "DeleteMessage"]
            .iter()
            .map(|op| format!("{op} {}", sqs.calls(op)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        "push messages (operator, by kind)",
        by_label(metrics, "ssm_operator_push_messages_total", "kind"),
    );

    // Lag of the invocations whose terminal node event reached the queue, and of those whose
    // event was dropped (only a regular round, at most a backstop away, or their command's
    // terminal event could bring them).
    let mut node_lost: HashSet<usize> = HashSet::new();
    let mut command_lost: HashSet<usize> = HashSet::new();
    for body in sqs.dropped_events() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let detail = &event["detail"];
        if !matches!(
            detail["status"].as_str(),
            Some("Success" | "Failed" | "TimedOut" | "Cancelled")
        ) {
            continue;
        }
        let Some(c) = detail["command-id"]
            .as_str()
            .and_then(command_index)
            .filter(|&c| c < config.commands)
        else {
            continue;
        };
        match detail["instance-id"].as_str() {
            Some(instance) => {
                if let Some(i) = instance_index(instance).filter(|&i| i < config.instances) {
                    node_lost.insert(c * config.instances + i);
                }
            }
            None => {
                command_lost.insert(c);
            }
        }
    }
    let mut delivered_lags = Vec::new();
    let mut lost_lags = Vec::new();
    for (k, s) in seen.iter().enumerate() {
        let Some(s) = s else { continue };
        let lag = s.at.saturating_duration_since(from[k]);
        if node_lost.contains(&k) {
            lost_lags.push(lag);
        } else {
            delivered_lags.push(lag);
        }
    }
    delivered_lags.sort();
    lost_lags.sort();
    row("lag, terminal node event on queue", spread(&delivered_lags));
    if variant.drop_ratio() > 0.0 {
        row(
            "lag, terminal node event dropped",
            format!(
                "{} (backstop {}; {} command terminal events dropped)",
                spread(&lost_lags),
                config.backstop(),
                command_lost.len()
            ),
        );
    }
    format!(
        "; SQS events {published} published, {dropped} dropped, {} received, {} deleted; \
         push messages {}",
        sqs.received(),
        sqs.deleted(),
        by_label(metrics, "ssm_operator_push_messages_total", "kind")
    )
}

/// The index of a command id made by [`command_id`].
fn command_index(id: &str) -> Option<usize> {
    let hex = id.strip_prefix(COMMAND_ID_PREFIX)?;
    usize::from_str_radix(hex, 16).ok()
}

/// The index of an instance id made by [`instance_id`].
fn instance_index(id: &str) -> Option<usize> {
    usize::from_str_radix(id.strip_prefix("i-")?, 16).ok()
}

/// The per-invocation GetCommandInvocation waiter on the same timelines, polling from the
/// send (the timelines start `lead` later): its total calls and each invocation's lag (first
/// poll at or after the terminal time − that time).
fn waiter(timelines: &[Timeline], lead: Duration) -> (u64, Vec<Duration>) {
    let interval = WAITER_INTERVAL.as_millis();
    let mut calls = 0u64;
    let lags = timelines
        .iter()
        .map(|t| {
            let terminal = lead + t.terminal;
            let polls_after_send = terminal.as_millis().div_ceil(interval);
            calls += 1 + polls_after_send as u64;
            let seen_at = Duration::from_millis((polls_after_send * interval) as u64);
            seen_at.saturating_sub(terminal)
        })
        .collect();
    (calls, lags)
}

/// The highest request rate over windows of about a second.
#[derive(Debug)]
struct PeakRate {
    since: Instant,
    calls: u64,
    peak: f64,
}

impl PeakRate {
    fn new(now: Instant, calls: u64) -> PeakRate {
        PeakRate {
            since: now,
            calls,
            peak: 0.0,
        }
    }

    /// Closes a window once a second has passed since it opened.
    fn sample(&mut self, now: Instant, calls: u64) {
        let window = now.duration_since(self.since).as_secs_f64();
        if window >= 1.0 {
            self.peak = self
                .peak
                .max(calls.saturating_sub(self.calls) as f64 / window);
            self.since = now;
            self.calls = calls;
        }
    }
}

/// The simulator's counters at one moment.
#[derive(Debug, Clone)]
struct SsmCounts {
    calls: BTreeMap<&'static str, u64>,
    total: u64,
    throttled: u64,
}

impl SsmCounts {
    const OPERATIONS: [&'static str; 5] = [
        "GetCommandInvocation",
        "ListCommandInvocations",
        "ListCommands",
        "SendCommand",
        "CancelCommand",
    ];

    fn read(sim: &Simulator) -> SsmCounts {
        SsmCounts {
            calls: Self::OPERATIONS
                .iter()
                .map(|&op| (op, sim.calls(op)))
                .collect(),
            total: sim.total_calls(),
            throttled: sim.throttled(),
        }
    }

    /// `GetCommandInvocation 123, ListCommandInvocations 45` (operations never called left
    /// out, except the first two).
    fn by_operation(&self) -> String {
        self.calls
            .iter()
            .filter(|(op, n)| {
                **n > 0 || matches!(**op, "GetCommandInvocation" | "ListCommandInvocations")
            })
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One figure: label column, then the value.
/// How many `lags` (sorted) there are, and their p50, p90, p99 and max; "none" if empty.
fn spread(lags: &[Duration]) -> String {
    if lags.is_empty() {
        return "none".to_string();
    }
    format!(
        "{}: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
        lags.len(),
        secs(quantile(lags, 50.0)),
        secs(quantile(lags, 90.0)),
        secs(quantile(lags, 99.0)),
        secs(quantile(lags, 100.0))
    )
}

fn row(label: impl std::fmt::Display, value: impl std::fmt::Display) {
    println!("{:<34}{value}", label.to_string());
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The `pct`-th percentile (nearest rank) of sorted durations.
fn quantile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * pct / 100.0).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Sums a metric's samples in OpenMetrics text, optionally only those whose labels contain
/// `label` (e.g. `outcome="success"`).
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    samples(text, name)
        .filter(|(labels, _)| label.is_none_or(|l| labels.contains(l)))
        .map(|(_, value)| value)
        // Not `sum()`: a float sum of nothing is -0.
        .fold(0.0, |sum, x| sum + x)
}

/// A metric's samples: (label text, value).
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}')?
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            return None;
        };
        Some((
            labels,
            value.split_whitespace().next()?.parse::<f64>().ok()?,
        ))
    })
}

/// A metric summed by one label's value: `success 123, Throttled 4` (`none` if no samples).
fn by_label(text: &str, name: &str, label: &str) -> String {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for (labels, value) in samples(text, name) {
        let key = labels
            .split(',')
            .find_map(|pair| pair.trim().strip_prefix(&format!("{label}=")))
            .map_or("?".to_string(), |v| v.trim_matches('"').to_string());
        *sums.entry(key).or_default() += value;
    }
    if sums.is_empty() {
        return "none".into();
    }
    let total = sums.values().fold(0.0, |sum, x| sum + x);
    let parts: Vec<String> = sums.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
    format!("{total:.0} ({})", parts.join(", "))
}

/// Sends the name, arrival time, SSM status and response code of every resource the first
/// time it is seen with `Finished=True`; signals `synced` once the initial list is done.
async fn watch_finished(
    api: Api<CommandInvocation>,
    finished: mpsc::UnboundedSender<(String, Instant, Option<String>, Option<i32>)>,
    synced: oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let mut sent: HashSet<String> = HashSet::new();
    let mut stream = pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let at = Instant::now();
                if obj.condition("Finished").is_none_or(|c| c.status != "True") {
                    continue;
                }
                let name = obj.name_any();
                if sent.contains(&name) {
                    continue;
                }
                let status = obj.status.as_ref();
                let message = (
                    name.clone(),
                    at,
                    status.and_then(|s| s.status.clone()),
                    status.and_then(|s| s.response_code),
                );
                if finished.send(message).is_err() {
                    return;
                }
                sent.insert(name);
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

/// After a failure: which resources never finished and what they last showed.
async fn report_missing(config: &Config, api: &Api<CommandInvocation>, seen: &[Option<Seen>]) {
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(k, _)| name(config, k))
        .collect();
    if missing.is_empty() {
        return;
    }
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
}

/// Installs the shipped CRD of `kind` (`commandinvocation`, `command`) with kubectl and waits
/// until it is served (as the e2e suite does).
async fn install_crd(cluster: &TestCluster, kind: &str) -> Result<(), String> {
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("crds/{kind}.yaml"));
    let served = format!("crd/{kind}s.ssm.operator.dev");
    for args in [
        vec!["apply", "-f", crd.to_str().unwrap_or_default()],
        vec![
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &served,
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
    fn start(
        cluster: &TestCluster,
        ssm_endpoint: &str,
        log: &Path,
        extra_args: &[String],
        extra_env: &[(String, String)],
    ) -> Result<Operator, String> {
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let stderr = file.try_clone().map_err(|e| e.to_string())?;
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?;
        let bin = std::env::var("BENCH_OPERATOR_BIN").unwrap_or_else(|_| OPERATOR_BIN.into());
        let child = StdCommand::new(&bin)
            .arg("run")
            .args(["--namespace", NAMESPACE])
            .args(["--http-bind", &http.to_string()])
            .args(extra_args)
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
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {bin}: {e}"))?;
        Ok(Operator {
            child: Some(child),
            log: log.to_path_buf(),
            http,
        })
    }

    /// Whether `/readyz` answers 200.
    async fn ready(&self) -> bool {
        matches!(http_get(self.http, "readyz").await, Some((200, _)))
    }

    /// The exit status, if the process has ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    async fn metrics(&self) -> Option<String> {
        match http_get(self.http, "metrics").await {
            Some((200, body)) => Some(body),
            _ => None,
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

/// The processes whose CPU a run reports besides the operator's: the cluster's (the
/// controller manager's garbage collector watches every resource, so it is part of what each
/// write costs) and this one, named `bench`.
fn cpu_accounts(cluster: &TestCluster, bench: &'static str) -> Vec<(&'static str, u32)> {
    let mut others = vec![
        ("kube-apiserver", cluster.apiserver_pid()),
        ("etcd", cluster.etcd_pid()),
    ];
    if let Some(pid) = cluster.controller_manager_pid() {
        others.push(("kube-controller-manager", pid));
    }
    others.push((bench, std::process::id()));
    others
}

/// What each of `others` ([`cpu_accounts`]) used since `before` (their CPU seconds then), as
/// `name 12.3 s` (`?` where unreadable).
fn cpu_used(others: &[(&'static str, u32)], before: &[Option<f64>]) -> Vec<String> {
    others
        .iter()
        .zip(before)
        .map(|((what, pid), before)| {
            let used = cpu_seconds(*pid).zip(*before).map(|(a, b)| a - b);
            format!(
                "{what} {}",
                used.map_or("?".into(), |s| format!("{s:.1} s"))
            )
        })
        .collect()
}

/// User + system CPU seconds a process has used (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

/// `getconf CLK_TCK`, asked once.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        StdCommand::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(100.0)
    })
}

/// A plain HTTP/1.0 GET on loopback (on a blocking thread): status code and body.
async fn http_get(addr: SocketAddr, path: &'static str) -> Option<(u16, String)> {
    tokio::task::spawn_blocking(move || {
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
    })
    .await
    .ok()
    .flatten()
}
