//! Lifecycle figures of `make bench`: what a stored `CommandInvocation` costs etcd, and the
//! `churn` variant (`BENCH_VARIANT=churn`), where resources are created, finish and expire
//! (`ttlSecondsAfterFinished`) for a long time, to show that nothing grows.
//!
//! **Footprint** (every fleet variant): etcd's `etcd_mvcc_db_total_size_in_use_in_bytes`
//! (from etcd's own `/metrics`), read after compacting etcd to its current revision (etcd's
//! JSON gateway, `/v3/kv/compaction`, physical) so that only live objects count, before the
//! fleet is created and after it finished: the difference / N = bytes per stored
//! `CommandInvocation` (finished, with its status, conditions and managedFields).
//!
//! **Churn**: `BENCH_CHURN_TOTAL` (default 50,000) invocations, created in commands of
//! `BENCH_CHURN_BATCH` nodes (default 100) at an even pace over `BENCH_CHURN_DURATION`
//! (default `10m`), each succeeding `BENCH_CHURN_RUN` (default `5s`) after its command is
//! added to the simulator, each with `ttlSecondsAfterFinished: BENCH_CHURN_TTL` (default 10).
//! The operator runs with default flags. kube-apiserver runs with `--event-ttl`
//! `BENCH_CHURN_EVENT_TTL` and `--etcd-compaction-interval` `BENCH_CHURN_COMPACTION` (both
//! `1m` by default; the API server's defaults are `1h` and `5m`), so that the Events and the
//! old revisions etcd keeps reach their steady state within the run, as the resources do (at
//! the defaults that takes over an hour; the README scales the figures). Every
//! `BENCH_CHURN_SAMPLE` (default `15s`) a row: operator RSS, etcd in-use bytes (no compaction
//! forced: the API server's), resources in the operator's cache (its
//! `ssm_operator_invocations` gauge) and stored. At the end, with the targets of issue 20:
//! growth of RSS and etcd in-use size over the last half of the creating phase (the highest
//! row of its second quarter against that of its first, ≤ 10 %),
//! resources in the cache once all expired (0), status writes per resource (≤ 1.5), status
//! lag p99 (SSM terminal → the bench's watch sees `Finished=True`, ≤ 5 s), expiry lag
//! (Finished seen → deletion seen, minus the TTL).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use ssm_operator::api::{CommandInvocation, CommandInvocationSpec};
use ssm_sim::{Command, Invocation, Plugin};
use testbed::TestCluster;

use super::{
    duration, metric, positive, quantile, row, secs, start_testbed_with, Operator,
    CREATE_CONCURRENCY, PLUGIN,
};

/// etcd's gauge of the bytes its database uses (free pages excluded).
const IN_USE: &str = "etcd_mvcc_db_total_size_in_use_in_bytes";

/// The targets the churn variant is printed against (issue 20).
const MAX_GROWTH_PERCENT: f64 = 10.0;
const MAX_WRITES_PER_RESOURCE: f64 = 1.5;
const MAX_LAG_P99: Duration = Duration::from_secs(5);

/// etcd's in-use size in bytes after compacting it to the current revision (only live keys
/// count), or `None` if etcd could not be asked.
pub async fn etcd_in_use_compacted(cluster: &TestCluster) -> Option<f64> {
    let addr = etcd_addr(cluster)?;
    let range = post(addr, "/v3/kv/range", r#"{"key":"AA=="}"#.into()).await?;
    let revision = serde_json::from_str::<serde_json::Value>(&range).ok()?["header"]["revision"]
        .as_str()?
        .to_string();
    let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
    post(addr, "/v3/kv/compaction", body).await?;
    // The gauge follows the backend's commit (every 100 ms by default).
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd_in_use(cluster).await
}

/// etcd's in-use size in bytes, as its `/metrics` says now.
pub async fn etcd_in_use(cluster: &TestCluster) -> Option<f64> {
    let text = get(etcd_addr(cluster)?, "/metrics").await?;
    Some(metric(&text, IN_USE, None))
}

/// Prints the footprint rows: etcd in-use bytes (compacted) before and now, and with `n`
/// resources stored since, the bytes per resource. The bench namespace's Events are deleted
/// first: the API server keeps them an hour (`--event-ttl`), the resources for good.
pub async fn print_footprint(cluster: &TestCluster, before: Option<f64>, n: Option<usize>) {
    if let Ok(client) = cluster.client().await {
        let events: Api<KubeEvent> = Api::namespaced(client, super::NAMESPACE);
        let deleted = events
            .delete_collection(&Default::default(), &Default::default())
            .await;
        if let Err(e) = deleted {
            eprintln!("bench: deleting the Events before measuring etcd: {e}");
        }
    }
    let after = etcd_in_use_compacted(cluster).await;
    match (before, after) {
        (Some(before), Some(after)) => {
            row(
                "etcd in use, compacted, no Events",
                format!("{:.2} MiB → {:.2} MiB", before / MIB, after / MIB),
            );
            if let Some(n) = n {
                row(
                    "etcd bytes per CommandInvocation",
                    format!("{:.0}", (after - before) / n as f64),
                );
            }
        }
        _ => row("etcd in use, compacted", "? (etcd not readable)"),
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn etcd_addr(cluster: &TestCluster) -> Option<SocketAddr> {
    cluster.etcd_url().strip_prefix("http://")?.parse().ok()
}

async fn get(addr: SocketAddr, path: &'static str) -> Option<String> {
    request(addr, format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")).await
}

async fn post(addr: SocketAddr, path: &'static str, body: String) -> Option<String> {
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    request(addr, head + &body).await
}

/// One plain HTTP/1.0 exchange on loopback (on a blocking thread); the body of a 200.
async fn request(addr: SocketAddr, text: String) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        stream.write_all(text.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
    })
    .await
    .ok()
    .flatten()
}

struct Churn {
    total: usize,
    batch: usize,
    over: Duration,
    run: Duration,
    ttl: i64,
    sample: Duration,
    /// kube-apiserver's `--event-ttl` for the run.
    event_ttl: Duration,
    /// kube-apiserver's `--etcd-compaction-interval` for the run.
    compaction: Duration,
}

impl Churn {
    fn from_env() -> Result<Churn, String> {
        Ok(Churn {
            total: positive("BENCH_CHURN_TOTAL", 50_000)?,
            batch: positive("BENCH_CHURN_BATCH", 100)?,
            over: duration("BENCH_CHURN_DURATION", "10m")?,
            run: duration("BENCH_CHURN_RUN", "5s")?,
            ttl: i64::try_from(positive("BENCH_CHURN_TTL", 10)?).unwrap_or(10),
            sample: duration("BENCH_CHURN_SAMPLE", "15s")?,
            event_ttl: duration("BENCH_CHURN_EVENT_TTL", "1m")?,
            compaction: duration("BENCH_CHURN_COMPACTION", "1m")?,
        })
    }
}

/// One row of the creating phase, in MiB: the operator's RSS and etcd's in-use size.
struct Sample {
    rss: f64,
    etcd: f64,
}

/// What the bench's watch saw, by resource name.
#[derive(Default)]
struct Seen {
    /// When SSM turns each one terminal (the simulator's clock is this process's).
    terminal: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
    lags: Vec<Duration>,
    expiry_lags: Vec<Duration>,
    created: usize,
    deleted: usize,
    /// Times the watch listed again (after an error), when it can miss what came and went.
    relists: usize,
}

/// `BENCH_VARIANT=churn`. See the module docs.
pub fn main() -> ExitCode {
    let churn = match Churn::from_env() {
        Ok(churn) => churn,
        Err(message) => {
            eprintln!("bench churn: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(&churn)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("bench churn: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every resource finished and expired (figures are printed either way).
async fn run(churn: &Churn) -> Result<bool, String> {
    let batches = churn.total.div_ceil(churn.batch);
    let pace = churn.over / u32::try_from(batches).unwrap_or(u32::MAX);
    println!();
    println!(
        "== bench churn: {} CommandInvocations in {batches} commands of {} nodes, one command \
         every {:.2} s over {:?}, each succeeding {:?} after its send, \
         ttlSecondsAfterFinished {}, kube-apiserver --event-ttl {:?} \
         --etcd-compaction-interval {:?}, operator default flags ==",
        churn.total,
        churn.batch,
        secs(pace),
        churn.over,
        churn.run,
        churn.ttl,
        churn.event_ttl,
        churn.compaction
    );
    let event_ttl = format!("--event-ttl={}s", churn.event_ttl.as_secs().max(1));
    let compaction = format!(
        "--etcd-compaction-interval={}s",
        churn.compaction.as_secs().max(1)
    );
    let testbed = start_testbed_with(&[&event_ttl, &compaction]).await?;
    let before = etcd_in_use_compacted(&testbed.cluster).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = tokio::spawn(follow(testbed.api.clone(), seen.clone(), churn.ttl));
    let log = std::env::temp_dir().join(format!("bench-churn-operator-{}.log", std::process::id()));
    let mut operator = Operator::start(&testbed.cluster, &testbed.sim.endpoint(), &log, &[], &[])?;
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !operator.ready().await {
        if Instant::now() > ready_by || operator.exited().is_some() {
            return Err(format!(
                "the operator is not ready:\n{}",
                operator.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!(
        "{:>7}  {:>9}  {:>10}  {:>8}  {:>8}  {:>8}",
        "t [s]", "RSS [MiB]", "etcd [MiB]", "cached", "stored", "created"
    );
    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = start;
    let mut next_batch = start;
    let mut created = 0;
    let mut batch = 0;
    let deadline = start + churn.over + Duration::from_secs(300);
    loop {
        let now = Instant::now();
        if batch < batches && now >= next_batch {
            let size = churn.batch.min(churn.total - created);
            create_batch(churn, &testbed, &seen, batch, size).await?;
            created += size;
            batch += 1;
            next_batch += pace;
        }
        if now >= next_sample {
            let metrics = operator.metrics().await.unwrap_or_default();
            let cached = metric(&metrics, "ssm_operator_invocations", None);
            let rss = operator.pid().and_then(rss_kib).unwrap_or(0) as f64 / 1024.0;
            let etcd = etcd_in_use(&testbed.cluster).await.unwrap_or(0.0) / MIB;
            let stored = {
                let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                seen.created.saturating_sub(seen.deleted)
            };
            let t = now - start;
            println!(
                "{:>7.0}  {rss:>9.1}  {etcd:>10.2}  {cached:>8.0}  {stored:>8}  {created:>8}",
                secs(t)
            );
            if batch < batches {
                samples.push(Sample { rss, etcd });
            }
            next_sample += churn.sample;
            let all_gone = batch == batches && stored == 0 && cached == 0.0;
            if all_gone || now > deadline || operator.exited().is_some() {
                break;
            }
        }
        let wake = if batch < batches {
            next_batch.min(next_sample)
        } else {
            next_sample
        };
        tokio::time::sleep_until(wake.into()).await;
    }
    let metrics = operator.metrics().await.unwrap_or_default();
    watch.abort();
    // Counted by the API server, not the watch (which misses what came and went in a relist).
    let left = testbed
        .api
        .list(&kube::api::ListParams::default())
        .await
        .map(|list| list.items.len());
    let end = End {
        created,
        left: left.ok(),
    };
    let complete = report(churn, &seen, &samples, &metrics, operator.pid(), &end);
    print_footprint(&testbed.cluster, before, None).await;
    operator.stop().await?;
    println!("   operator log: {}", log.display());
    Ok(complete)
}

/// Adds one command of `size` nodes to the simulator and creates its invocations.
async fn create_batch(
    churn: &Churn,
    testbed: &super::Testbed,
    seen: &Mutex<Seen>,
    batch: usize,
    size: usize,
) -> Result<(), String> {
    let command_id = format!("{:08x}-0000-4000-8000-{batch:012x}", 0xc0ffee);
    let nodes: Vec<String> = (0..size)
        .map(|i| format!("i-{:017x}", batch * 1000 + i))
        .collect();
    let mut command = Command::new(&command_id);
    for node in &nodes {
        command =
            command.invocation(Invocation::new(node).plugin(Plugin::succeeding(PLUGIN, churn.run)));
    }
    let sent = testbed.sim.add_commands([command]);
    {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        for node in &nodes {
            seen.terminal
                .insert(format!("churn-{batch}-{node}"), sent + churn.run);
        }
    }
    let api = &testbed.api;
    let results: Vec<Result<(), String>> = futures::stream::iter(nodes)
        .map(|node| {
            let name = format!("churn-{batch}-{node}");
            let spec = CommandInvocationSpec {
                ttl_seconds_after_finished: Some(churn.ttl),
                command_id: command_id.clone(),
                instance_id: node,
                plugin_name: Some(PLUGIN.into()),
                region: None,
            };
            async move {
                api.create(&PostParams::default(), &CommandInvocation::new(&name, spec))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("create {name}: {e}"))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Follows the namespace: creations, the first `Finished=True` of each resource (status lag),
/// deletions (expiry lag beyond the TTL).
async fn follow(api: Api<CommandInvocation>, seen: Arc<Mutex<Seen>>, ttl: i64) {
    let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
    let mut known: HashSet<String> = HashSet::new();
    // The names a relist (after a watch error) has shown so far.
    let mut relisted: HashSet<String> = HashSet::new();
    let mut stream = pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = stream.next().await {
        let at = Instant::now();
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(Event::InitApply(obj)) = &event {
            relisted.insert(obj.name_any());
        }
        match event {
            Ok(Event::Init) => {
                seen.relists += 1;
                relisted.clear();
            }
            // Deleted while the watch was down: no expiry lag is known for those.
            Ok(Event::InitDone) => {
                let gone: Vec<String> = known.difference(&relisted).cloned().collect();
                for name in gone {
                    known.remove(&name);
                    seen.deleted += 1;
                    seen.finished.remove(&name);
                    seen.terminal.remove(&name);
                }
            }
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let name = obj.name_any();
                if known.insert(name.clone()) {
                    seen.created += 1;
                }
                let finished = obj
                    .condition("Finished")
                    .is_some_and(|c| c.status == "True");
                if finished && !seen.finished.contains_key(&name) {
                    seen.finished.insert(name.clone(), at);
                    if let Some(terminal) = seen.terminal.get(&name).copied() {
                        seen.lags.push(at.saturating_duration_since(terminal));
                    }
                }
            }
            Ok(Event::Delete(obj)) => {
                let name = obj.name_any();
                known.remove(&name);
                seen.deleted += 1;
                if let Some(finished) = seen.finished.remove(&name) {
                    let lived = at.saturating_duration_since(finished);
                    seen.expiry_lags.push(lived.saturating_sub(ttl));
                }
                seen.terminal.remove(&name);
            }
            Err(e) => eprintln!("bench churn: watch error (retrying): {e}"),
        }
    }
}

/// How the run ended, as the bench and the API server count it.
struct End {
    /// Resources the bench created.
    created: usize,
    /// Resources the API server still lists (`None`: it could not be asked).
    left: Option<usize>,
}

/// Prints the end figures next to the targets; whether every resource was created and expired.
fn report(
    churn: &Churn,
    seen: &Mutex<Seen>,
    samples: &[Sample],
    metrics: &str,
    pid: Option<u32>,
    end: &End,
) -> bool {
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    seen.lags.sort();
    seen.expiry_lags.sort();
    println!();
    // etcd's size is a saw (it grows between the API server's compactions, then falls), so
    // the first and last rows alone would say more about where in a tooth they fell than about
    // growth: the highest row of each quarter of the last half (each spans several
    // compactions) is compared instead.
    let growth = |pick: fn(&Sample) -> f64| {
        let last_half = &samples[samples.len() / 2..];
        let (third, fourth) = last_half.split_at(last_half.len() / 2);
        let highest = |rows: &[Sample]| rows.iter().map(pick).fold(f64::NAN, f64::max);
        let lowest = last_half.iter().map(pick).fold(f64::NAN, f64::min);
        let (a, b) = (highest(third), highest(fourth));
        if a > 0.0 && b.is_finite() {
            format!(
                "highest {a:.1} → {b:.1} MiB ({:+.1} %; target ≤ {MAX_GROWTH_PERCENT} %), \
                 lowest {lowest:.1} MiB",
                100.0 * (b - a) / a
            )
        } else {
            "? (too few samples)".into()
        }
    };
    row("operator RSS, last half", growth(|s| s.rss));
    row("etcd in use, last half", growth(|s| s.etcd));
    row(
        "operator peak RSS (VmHWM)",
        pid.and_then(hwm_kib)
            .map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
    );
    let cached = metric(metrics, "ssm_operator_invocations", None);
    row(
        "operator cache at the end",
        format!("{cached:.0} resources (target 0)"),
    );
    row(
        "created / finished / deleted",
        format!(
            "{} / {} / {} seen by the bench's watch ({} relists); {} created, {} left in the \
             API server",
            seen.created,
            seen.lags.len(),
            seen.deleted,
            seen.relists,
            end.created,
            end.left.map_or("?".into(), |n| n.to_string())
        ),
    );
    let writes = metric(metrics, "ssm_operator_status_writes_total", None);
    let per = writes / churn.total as f64;
    row(
        "status writes per resource",
        format!("{per:.2} (target ≤ {MAX_WRITES_PER_RESOURCE})"),
    );
    row(
        "status lag p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} s (target p99 ≤ {} s)",
            secs(quantile(&seen.lags, 50.0)),
            secs(quantile(&seen.lags, 99.0)),
            secs(seen.lags.last().copied().unwrap_or_default()),
            MAX_LAG_P99.as_secs()
        ),
    );
    row(
        "expiry lag past TTL p50/p99/max",
        format!(
            "{:.2} / {:.2} / {:.2} s",
            secs(quantile(&seen.expiry_lags, 50.0)),
            secs(quantile(&seen.expiry_lags, 99.0)),
            secs(seen.expiry_lags.last().copied().unwrap_or_default())
        ),
    );
    end.created == churn.total && end.left == Some(0) && cached == 0.0
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// `VmHWM` of a process in KiB.
fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
