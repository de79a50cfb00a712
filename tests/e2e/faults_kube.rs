//! Faults on the Kubernetes side, with real processes: the API server goes away under a running
//! operator, and the operator dies in the middle of a burst of status writes. In both cases
//! nothing may be lost (every resource ends right) and nothing may be said twice (one Event
//! per SSM status change per resource).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use ssm_operator::api::{CommandInvocation, CommandInvocationSpec};
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;

use crate::support::{
    observe_quietly, poll_until, ssm_status, Operator, OperatorOptions, World, DEADLINE,
    INSTANCE_ID,
};

const PLUGIN: &str = "aws:runShellScript";

/// How long kube-apiserver stays down in the outage scenario.
const OUTAGE: Duration = Duration::from_secs(20);

/// A distinct, well-formed (36 characters) command id per resource.
fn command_id(scenario: u32, i: usize) -> String {
    format!("fa{scenario:06x}-0000-4000-8000-{i:012x}")
}

fn spec_for(command_id: &str) -> CommandInvocationSpec {
    CommandInvocationSpec {
        ttl_seconds_after_finished: None,
        command_id: command_id.to_string(),
        instance_id: INSTANCE_ID.into(),
        plugin_name: Some(PLUGIN.into()),
        region: None,
    }
}

/// What one resource must end as, from its simulated timeline.
#[derive(Clone, Debug)]
struct Expected {
    name: String,
    /// When SSM turns terminal, counted from when the command was added to the simulator.
    finishes_at: Duration,
    status: &'static str,
    code: i32,
    stdout: Option<String>,
    stderr: Option<String>,
}

impl Expected {
    /// Why `obj` is not what this resource must end as, or `None` if it is.
    fn mismatch(&self, obj: Option<&CommandInvocation>) -> Option<String> {
        let Some(obj) = obj else {
            return Some("missing".into());
        };
        let Some(s) = obj.status.as_ref() else {
            return Some("no status".into());
        };
        let finished = obj.condition("Finished").map(|c| c.status.as_str());
        let verdict = if self.status == "Success" {
            "Ready"
        } else {
            "Stalled"
        };
        let verdict_status = obj.condition(verdict).map(|c| c.status.as_str());
        let got = (
            s.status.as_deref(),
            s.response_code,
            s.standard_output_content.as_deref(),
            s.standard_error_content.as_deref(),
            finished,
            verdict_status,
        );
        let want = (
            Some(self.status),
            Some(self.code),
            self.stdout.as_deref(),
            self.stderr.as_deref(),
            Some("True"),
            Some("True"),
        );
        (got != want).then(|| {
            format!("(status, code, stdout, stderr, Finished, {verdict}) = {got:?}, want {want:?}")
        })
    }
}

/// The simulator script for `e`: Pending, InProgress after 300 ms, then its terminal status.
fn timeline(command_id: &str, e: &Expected) -> Command {
    let mut plugin = Plugin::new(PLUGIN).step(Duration::from_millis(300), Status::InProgress);
    plugin = match e.status {
        "Success" => plugin.step(e.finishes_at, Status::Success),
        _ => plugin.step_with(e.finishes_at, Status::Failed, "Failed", e.code),
    };
    if let Some(out) = &e.stdout {
        plugin = plugin.stdout(out.clone());
    }
    if let Some(err) = &e.stderr {
        plugin = plugin.stderr(err.clone());
    }
    Command::new(command_id).invocation(Invocation::new(INSTANCE_ID).plugin(plugin))
}

/// All CommandInvocations of the world's namespace by name.
async fn all_by_name(world: &World) -> BTreeMap<String, CommandInvocation> {
    world
        .api()
        .list(&ListParams::default())
        .await
        .expect("list CommandInvocations")
        .items
        .into_iter()
        .map(|o| (o.name_any(), o))
        .collect()
}

/// Resources that do not (yet) match what they must end as, with the reason.
fn not_right(
    expected: &[Expected],
    seen: &BTreeMap<String, CommandInvocation>,
) -> Vec<(String, String)> {
    expected
        .iter()
        .filter_map(|e| {
            e.mismatch(seen.get(&e.name))
                .map(|why| (e.name.clone(), why))
        })
        .collect()
}

/// Polls until every resource matches its expectation or `limit` passes; returns the last
/// list and what is still not right (empty on success).
async fn wait_all_right(
    world: &World,
    expected: &[Expected],
    limit: Duration,
) -> (BTreeMap<String, CommandInvocation>, Vec<(String, String)>) {
    let start = Instant::now();
    loop {
        let seen = all_by_name(world).await;
        let wrong = not_right(expected, &seen);
        if wrong.is_empty() || start.elapsed() > limit {
            return (seen, wrong);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often each (resource, reason) was recorded as an Event: an Event object counts its
/// series count (the recorder folds repeats of one process into a series), or 1.
async fn event_occurrences(world: &World) -> BTreeMap<(String, String), i32> {
    let events = Api::<Event>::namespaced(world.client.clone(), &world.namespace)
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items;
    let mut counts = BTreeMap::new();
    for event in events {
        let name = event.regarding.as_ref().and_then(|r| r.name.clone());
        let key = (
            name.unwrap_or_default(),
            event.reason.clone().unwrap_or_default(),
        );
        *counts.entry(key).or_insert(0) += event.series.as_ref().map_or(1, |s| s.count.max(1));
    }
    counts
}

/// Polls until every resource has an Event with its terminal reason, or `limit` passes; then
/// watches `settle` more for late duplicates, and returns the final counts.
async fn settled_events(
    world: &World,
    expected: &[Expected],
    limit: Duration,
    settle: Duration,
) -> BTreeMap<(String, String), i32> {
    let start = Instant::now();
    loop {
        let counts = event_occurrences(world).await;
        let all = expected
            .iter()
            .all(|e| counts.contains_key(&(e.name.clone(), e.status.to_string())));
        if all || start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    observe_quietly(settle).await;
    event_occurrences(world).await
}

/// Duplicated Events (occurrences beyond the first per resource and reason), and the
/// resources whose terminal Event is missing.
fn event_damage(
    expected: &[Expected],
    counts: &BTreeMap<(String, String), i32>,
) -> (Vec<String>, Vec<String>) {
    let duplicates = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|((name, reason), n)| format!("{name}/{reason} x{n}"))
        .collect();
    let missing = expected
        .iter()
        .filter(|e| !counts.contains_key(&(e.name.clone(), e.status.to_string())))
        .map(|e| format!("{}/{}", e.name, e.status))
        .collect();
    (duplicates, missing)
}

/// Sum of all samples of a metric family in a Prometheus text exposition, `None` if absent.
fn metric_sum(text: &str, family: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest,
            };
            value.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The HTTP status code of `GET {operator}/{path}`, `None` if nothing answered.
async fn http_code(operator: &Operator, path: &str) -> Option<u16> {
    let url = format!("{}/{path}", operator.http);
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "2"])
        .args(["-w", "%{http_code}", &url])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|&code| code != 0)
}

/// Operator log lines that mention `needle`, at most `max`, for the report.
fn log_lines(operator: &Operator, needle: &str, max: usize) -> String {
    let log = operator.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    let shown = &lines[..lines.len().min(max)];
    format!(
        "{} lines with {needle:?}:\n{}",
        lines.len(),
        shown.join("\n")
    )
}

pub async fn apiserver_outage_mid_flight_loses_nothing(_shared: Arc<TestCluster>) {
    // A cluster of its own: the shared one must stay up for the other scenarios.
    let started = Instant::now();
    let cluster = Arc::new(TestCluster::start().await.expect("second test cluster"));
    crate::install_crd(&cluster)
        .await
        .expect("install the CRD in the second cluster");
    eprintln!(
        "apiserver-outage: own cluster ready in {:?} at {}",
        started.elapsed(),
        cluster.server_url()
    );
    let world = World::new(cluster.clone(), "apiserver-outage").await;
    let sim = Simulator::start().await.expect("simulator");

    // Terminal at spread times: the first before the outage, most during it (it starts about
    // 3 s in and lasts 20 s plus the restart), the last ones after it. Even: Success with
    // stdout; odd: Failed with an exit code and stderr.
    let finishes = [2, 5, 7, 9, 12, 15, 18, 21, 30, 38];
    let expected: Vec<Expected> = finishes
        .iter()
        .enumerate()
        .map(|(i, &secs)| {
            let success = i % 2 == 0;
            Expected {
                name: format!("outage-{i}"),
                finishes_at: Duration::from_secs(secs),
                status: if success { "Success" } else { "Failed" },
                code: if success { 0 } else { 10 + i as i32 },
                stdout: Some(format!("out of outage-{i}\n")),
                stderr: (!success).then(|| format!("outage-{i} failed\n")),
            }
        })
        .collect();
    let t0 = Instant::now();
    for (i, e) in expected.iter().enumerate() {
        let id = command_id(1, i);
        sim.add_command(timeline(&id, e));
        world.create(&e.name, spec_for(&id)).await;
    }
    let mut operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            ..OperatorOptions::default()
        },
    );
    poll_until(
        "the operator's /readyz to answer 200 before the outage",
        || {
            let operator = &operator;
            async move { (http_code(operator, "readyz").await == Some(200)).then_some(()) }
        },
    )
    .await;
    // Mid-flight: the first resource has finished, all others are running.
    world.wait_condition("outage-0", "Finished", "True").await;
    for e in &expected[1..] {
        if e.finishes_at > t0.elapsed() + Duration::from_secs(1) {
            world.wait_status(&e.name, "InProgress").await;
        }
    }

    let outage_start = t0.elapsed();
    cluster.stop_apiserver().await;
    eprintln!("apiserver-outage: kube-apiserver stopped at t={outage_start:.1?}");
    // The outage window: the operator must stay up the whole time, and say it is not ready.
    let window = Instant::now();
    let mut not_ready_after = None;
    let mut readyz_seen = BTreeSet::new();
    let mut exited = None;
    while window.elapsed() < OUTAGE {
        if let Some(status) = operator.exit_status() {
            exited = Some((window.elapsed(), status));
            break;
        }
        let code = http_code(&operator, "readyz").await;
        readyz_seen.insert(code);
        if code == Some(503) && not_ready_after.is_none() {
            not_ready_after = Some(window.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restart = Instant::now();
    cluster
        .start_apiserver()
        .await
        .unwrap_or_else(|e| panic!("restarting kube-apiserver: {e}"));
    let outage_end = t0.elapsed();
    eprintln!(
        "apiserver-outage: kube-apiserver back at t={outage_end:.1?} (restart took {:.1?}); \
         /readyz answers seen while down: {readyz_seen:?}; 503 after {not_ready_after:?}",
        restart.elapsed()
    );
    assert!(
        exited.is_none(),
        "the operator exited during the outage: {exited:?}; log:\n{}",
        operator.log_tail()
    );
    let finishing_during = expected
        .iter()
        .filter(|e| e.finishes_at > outage_start && e.finishes_at < outage_end)
        .count();
    eprintln!(
        "apiserver-outage: {finishing_during} of {} resources turn terminal in SSM during the \
         outage",
        expected.len()
    );
    let not_ready_in_outage = not_ready_after.is_some();

    let back = Instant::now();
    let ready_again = {
        let limit = DEADLINE;
        loop {
            if http_code(&operator, "readyz").await == Some(200) {
                break Some(back.elapsed());
            }
            if back.elapsed() > limit {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    eprintln!("apiserver-outage: /readyz 200 again {ready_again:?} after the restart");

    let last = expected
        .iter()
        .map(|e| e.finishes_at)
        .max()
        .unwrap_or_default();
    let limit = last.saturating_sub(t0.elapsed()) + DEADLINE;
    let (seen, wrong) = wait_all_right(&world, &expected, limit).await;
    let counts = settled_events(
        &world,
        &expected,
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .await;
    let (duplicates, missing_events) = event_damage(&expected, &counts);
    let metrics = operator.metrics().await;
    let watch_errors = metric_sum(&metrics, "ssm_operator_watch_errors_total");
    let still_running = operator.exit_status().is_none();

    eprintln!(
        "apiserver-outage: after {:.1?}: LOST: {} of {} resources not finished right {wrong:?}; \
         {} duplicate Event(s) {duplicates:?}; {} missing terminal Event(s) {missing_events:?}; \
         ssm_operator_watch_errors_total = {watch_errors:?}; events seen: {counts:?}",
        started.elapsed(),
        wrong.len(),
        expected.len(),
        duplicates.len(),
        missing_events.len(),
    );
    eprintln!(
        "apiserver-outage: operator {}",
        log_lines(&operator, "WARN", 12)
    );
    assert!(still_running, "the operator exited after the outage");
    assert!(
        wrong.is_empty(),
        "resources not finished right: {wrong:?}\nlast seen: {:#?}",
        wrong
            .iter()
            .map(|(name, _)| seen.get(name).and_then(|o| o.status.clone()))
            .collect::<Vec<_>>()
    );
    assert!(duplicates.is_empty(), "duplicated Events: {duplicates:?}");
    assert!(
        missing_events.is_empty(),
        "terminal Events missing: {missing_events:?}"
    );
    assert!(
        not_ready_in_outage,
        "/readyz never answered 503 during the {OUTAGE:?} outage (answers: {readyz_seen:?})"
    );
    assert!(
        ready_again.is_some(),
        "/readyz did not answer 200 within {DEADLINE:?} after the restart"
    );
    let watch_errors = watch_errors.unwrap_or_else(|| {
        panic!("/metrics has no ssm_operator_watch_errors_total after the outage")
    });
    assert!(
        watch_errors > 0.0,
        "ssm_operator_watch_errors_total = {watch_errors} after the outage"
    );
    operator.stop().await;
    drop(world);
    drop(cluster);
}

/// What a watch of the namespace saw: the latest lastTransitionTime per (resource, condition
/// type), any move backwards, and the resources seen as Success.
#[derive(Default)]
struct Watched {
    transitions: BTreeMap<(String, String), Timestamp>,
    backwards: Vec<String>,
    success: BTreeSet<String>,
}

impl Watched {
    fn observe(&mut self, obj: &CommandInvocation) {
        let name = obj.name_any();
        for c in obj.status.iter().flat_map(|s| &s.conditions) {
            let at = c.last_transition_time.0;
            let key = (name.clone(), c.type_.clone());
            if let Some(before) = self.transitions.get(&key) {
                if at < *before {
                    self.backwards
                        .push(format!("{name} {}: {before} -> {at}", c.type_));
                }
            }
            self.transitions.insert(key, at);
        }
        if ssm_status(obj) == Some("Success") {
            self.success.insert(name);
        }
    }
}

pub async fn operator_killed_during_a_burst_of_status_writes(cluster: Arc<TestCluster>) {
    const N: usize = 40;
    const KILL_AFTER: usize = 3;
    let scenario_start = Instant::now();
    let world = World::new(cluster, "kill-in-burst").await;
    let sim = Simulator::start().await.expect("simulator");

    // Follow every change from the start, also across the kill.
    let watched = Arc::new(Mutex::new(Watched::default()));
    let (success_tx, mut success_rx) = tokio::sync::watch::channel(0usize);
    let watch_task = {
        let watched = watched.clone();
        let stream = watcher(world.api(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(next) = stream.next().await {
                let Ok(obj) = next else { continue };
                let successes = {
                    let mut w = watched.lock().unwrap_or_else(|e| e.into_inner());
                    w.observe(&obj);
                    w.success.len()
                };
                success_tx.send_replace(successes);
            }
        })
    };

    // Pending, then all Success 2.5 s after being added: one burst of status writes.
    let expected: Vec<Expected> = (0..N)
        .map(|i| Expected {
            name: format!("burst-{i}"),
            finishes_at: Duration::from_millis(2500),
            status: "Success",
            code: 0,
            stdout: Some(format!("burst-{i} done\n")),
            stderr: None,
        })
        .collect();
    for (i, e) in expected.iter().enumerate() {
        let id = command_id(2, i);
        let plugin = Plugin::new(PLUGIN)
            .step(e.finishes_at, Status::Success)
            .stdout(e.stdout.clone().unwrap_or_default());
        sim.add_command(Command::new(&id).invocation(Invocation::new(INSTANCE_ID).plugin(plugin)));
        world.create(&e.name, spec_for(&id)).await;
    }
    let options = OperatorOptions {
        ssm_endpoint: sim.endpoint(),
        ..OperatorOptions::default()
    };
    let first = Operator::start(&world, &options);
    let what = format!("{KILL_AFTER} resources written Success");
    tokio::time::timeout(DEADLINE, success_rx.wait_for(|&n| n >= KILL_AFTER))
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}:\n{}", first.log_tail()))
        .expect("the watch of the namespace ended");
    let first_log = first.kill_and_log();
    let (seen_at_kill, before_kill) = {
        let w = watched.lock().unwrap_or_else(|e| e.into_inner());
        (w.success.len(), w.transitions.clone())
    };
    // What the API server holds right after the kill (the watch may lag behind it).
    let at_kill = all_by_name(&world).await;
    let success_at_kill = at_kill
        .values()
        .filter(|o| ssm_status(o) == Some("Success"))
        .count();
    let events_at_kill = event_occurrences(&world)
        .await
        .keys()
        .filter(|(_, reason)| reason == "Success")
        .count();
    let written_by_first = first_log
        .lines()
        .filter(|l| l.contains("status updated") && l.contains("status=\"Success\""))
        .count();
    eprintln!(
        "kill-in-burst: killed the operator after the watch saw {seen_at_kill} Success; \
         its log shows {written_by_first} Success status writes; the API server then held \
         {success_at_kill} of {N} Success statuses and {events_at_kill} Success Events"
    );

    let second = Operator::start(&world, &options);
    let (seen, wrong) = wait_all_right(&world, &expected, DEADLINE).await;
    let counts = settled_events(
        &world,
        &expected,
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .await;
    let (duplicates, missing_events) = event_damage(&expected, &counts);
    let success_events: BTreeMap<&str, i32> = expected
        .iter()
        .map(|e| {
            let n = counts
                .get(&(e.name.clone(), "Success".to_string()))
                .copied()
                .unwrap_or(0);
            (e.name.as_str(), n)
        })
        .collect();
    let not_exactly_one: Vec<_> = success_events.iter().filter(|(_, &n)| n != 1).collect();

    // lastTransitionTime: never earlier than what was seen before the kill, and never moved
    // backwards in any update the watch saw.
    let mut moved_back = Vec::new();
    for ((name, type_), before) in &before_kill {
        let now = seen
            .get(name)
            .and_then(|o| o.condition(type_))
            .map(|c| c.last_transition_time.0);
        match now {
            Some(now) if now >= *before => {}
            now => moved_back.push(format!(
                "{name} {type_}: {before} before the kill, {now:?} now"
            )),
        }
    }
    watch_task.abort();
    let backwards_in_watch = watched
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .backwards
        .clone();

    eprintln!(
        "kill-in-burst: after {:.1?}: LOST: {} of {N} resources not finished right {wrong:?}; \
         {} duplicate Event(s) {duplicates:?}; {} missing Success Event(s) {missing_events:?}; \
         {} resource(s) without exactly one Success Event {not_exactly_one:?}; \
         {} lastTransitionTime(s) earlier than before the kill {moved_back:?}; \
         {} backwards move(s) seen by the watch {backwards_in_watch:?}",
        scenario_start.elapsed(),
        wrong.len(),
        duplicates.len(),
        missing_events.len(),
        not_exactly_one.len(),
        moved_back.len(),
        backwards_in_watch.len(),
    );
    for (name, _) in &not_exactly_one {
        let lines: Vec<&str> = first_log
            .lines()
            .filter(|l| {
                let mentions = [
                    format!("/{name}."),
                    format!("name={name}}}"),
                    format!("name={name} "),
                ]
                .iter()
                .any(|p| l.contains(p.as_str()));
                mentions && !l.contains("DEBUG")
            })
            .collect();
        eprintln!(
            "kill-in-burst: {name}: first operator's log:\n{}",
            lines.join("\n")
        );
    }
    assert!(wrong.is_empty(), "resources not finished right: {wrong:?}");
    assert!(
        moved_back.is_empty() && backwards_in_watch.is_empty(),
        "lastTransitionTime moved backwards: {moved_back:?} {backwards_in_watch:?}"
    );
    assert!(
        not_exactly_one.is_empty(),
        "Success Events per resource (want exactly 1): {not_exactly_one:?}"
    );
    assert!(duplicates.is_empty(), "duplicated Events: {duplicates:?}");
    second.stop().await;
}
