//! Faults on the SSM side and on the leader, with real processes.
//!
//! - SSM misbehaves in every way a real endpoint can (HTTP 500 storms, connections closed
//!   without an answer, replies slower than the SDK's attempt timeout): every resource still
//!   ends right, says `SsmUnavailable` while it lasts, never stalls on it, and the operator
//!   neither hammers SSM nor asks it anything once all are finished.
//! - The leader is paused (SIGSTOP) with a reconcile in flight, a follower takes over and
//!   finishes the job, then the old leader resumes (SIGCONT): it must write nothing more (no
//!   status, no Event) and step down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use ssm_operator::api::CommandInvocationSpec;
use ssm_sim::{Command, Fault, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;

use crate::history::{History, Seen};
use crate::support::{
    leader_and_follower, observe_quietly, poll_until, signal, spec, ssm_status, wait_log, Operator,
    OperatorOptions, World, COMMAND_ID, DEADLINE, INSTANCE_ID,
};

const PLUGIN: &str = "aws:runShellScript";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `.status.status` values of `versions`, consecutive repeats folded.
fn status_sequence(versions: &[Seen]) -> Vec<String> {
    let mut seq: Vec<String> = Vec::new();
    for s in versions {
        let v = s.status.clone().unwrap_or_else(|| "-".into());
        if seq.last() != Some(&v) {
            seq.push(v);
        }
    }
    seq
}

// ---------------------------------------------------------------------------------------------
// SSM storms

/// How many requests each part of the storm hits, in the order they are served.
const SERVER_ERRORS: u32 = 30;
const DROPPED: u32 = 10;
const SLOW: u32 = 6;
/// How late a slow reply comes: three times the operator's attempt timeout below.
const SLOW_DELAY: Duration = Duration::from_millis(1500);
/// `--ssm-attempt-timeout` for the storm scenario (a whole SSM call gets 3× that).
const ATTEMPT_TIMEOUT: &str = "500ms";
/// Calls per resource and second the operator may make on average over the scenario.
const CALLS_PER_RESOURCE_SECOND: u64 = 4;
/// How long nothing may ask SSM once everything is finished.
const QUIET_WHEN_FINISHED: Duration = Duration::from_secs(3);

/// One resource of the storm scenario and how it must end.
struct Case {
    name: &'static str,
    command_id: &'static str,
    status: &'static str,
    code: i32,
    /// When SSM turns terminal, from when the command was added.
    ends: Duration,
}

const CASES: [Case; 4] = [
    Case {
        name: "storm-ok-a",
        command_id: "5a000001-0000-4000-8000-000000000001",
        status: "Success",
        code: 0,
        ends: Duration::from_millis(2000),
    },
    Case {
        name: "storm-ok-b",
        command_id: "5a000001-0000-4000-8000-000000000002",
        status: "Success",
        code: 0,
        ends: Duration::from_millis(3000),
    },
    Case {
        name: "storm-failed-a",
        command_id: "5a000001-0000-4000-8000-000000000003",
        status: "Failed",
        code: 2,
        ends: Duration::from_millis(2500),
    },
    Case {
        name: "storm-failed-b",
        command_id: "5a000001-0000-4000-8000-000000000004",
        status: "Failed",
        code: 7,
        ends: Duration::from_millis(3000),
    },
];

impl Case {
    /// Pending, InProgress after 500 ms, then the terminal status.
    fn command(&self) -> Command {
        let plugin = Plugin::new(PLUGIN).step(ms(500), Status::InProgress);
        let plugin = match self.status {
            "Success" => plugin.step(self.ends, Status::Success),
            _ => plugin.step_with(self.ends, Status::Failed, "Failed", self.code),
        };
        Command::new(self.command_id).invocation(Invocation::new(INSTANCE_ID).plugin(plugin))
    }

    fn spec(&self) -> CommandInvocationSpec {
        CommandInvocationSpec {
            ttl_seconds_after_finished: None,
            command_id: self.command_id.into(),
            instance_id: INSTANCE_ID.into(),
            plugin_name: Some(PLUGIN.into()),
            region: None,
        }
    }
}

pub async fn ssm_5xx_storms_drops_and_slow_replies_end_right(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "ssm-storms").await;
    let sim = Simulator::start().await.expect("simulator");
    for case in &CASES {
        sim.add_command(case.command());
    }
    let history = History::start(&world).await;
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: vec!["--ssm-attempt-timeout".into(), ATTEMPT_TIMEOUT.into()],
            ..OperatorOptions::default()
        },
    );
    let started = Instant::now();
    for case in &CASES {
        world.create(case.name, case.spec()).await;
    }
    // Each has had a first answer from SSM: the storm hits resources the operator knows.
    for case in &CASES {
        world
            .wait_for(case.name, "a first SSM answer", |o| ssm_status(o).is_some())
            .await;
    }
    let calls_before_storm = sim.total_calls();
    // Served in this order, to whichever requests come next: nothing gets a real answer until
    // the whole storm is over, so every resource goes through it.
    sim.inject(Fault::ServerError {
        count: SERVER_ERRORS,
    });
    sim.inject(Fault::DropConnection { count: DROPPED });
    sim.inject(Fault::Slow {
        count: SLOW,
        delay: SLOW_DELAY,
    });
    let storm = u64::from(SERVER_ERRORS + DROPPED + SLOW);

    let mut finished = Vec::new();
    for case in &CASES {
        finished.push(world.wait_condition(case.name, "Finished", "True").await);
    }
    let elapsed = started.elapsed();
    let calls = sim.total_calls();

    // Every resource ends right.
    for (case, obj) in CASES.iter().zip(&finished) {
        let status = obj.status.as_ref().expect("status");
        let verdict = if case.status == "Success" {
            "Ready"
        } else {
            "Stalled"
        };
        assert_eq!(
            (
                status.status.as_deref(),
                status.response_code,
                obj.condition(verdict).map(|c| c.status.as_str()),
                obj.condition("Reconciling").map(|c| c.status.as_str()),
            ),
            (
                Some(case.status),
                Some(case.code),
                Some("True"),
                Some("False")
            ),
            "{}: (status, code, {verdict}, Reconciling); {status:#?}",
            case.name
        );
    }
    assert!(
        calls >= calls_before_storm + storm,
        "the storm was served: {calls} calls in all, {calls_before_storm} before a storm of \
         {storm}"
    );

    // During the storm each said SsmUnavailable while still reconciling, and none stalled on
    // it: Stalled=True may only ever mean the Failed outcome.
    for case in &CASES {
        let versions = history.of(case.name);
        let sequence: Vec<String> = versions
            .iter()
            .map(|s| {
                let r = s.condition("Reconciling").cloned().unwrap_or_default();
                let st = s.condition("Stalled").cloned().unwrap_or_default();
                format!(
                    "{} Reconciling={}/{} Stalled={}/{}",
                    s.status.as_deref().unwrap_or("-"),
                    r.status,
                    r.reason,
                    st.status,
                    st.reason
                )
            })
            .collect();
        assert!(
            versions.iter().any(|s| s
                .condition("Reconciling")
                .is_some_and(|c| c.status == "True" && c.reason == "SsmUnavailable")),
            "{}: never Reconciling=True/SsmUnavailable; versions seen: {sequence:#?}",
            case.name
        );
        let stalled: Vec<&Seen> = versions
            .iter()
            .filter(|s| s.has("Stalled", "True"))
            .filter(|s| {
                case.status == "Success" || s.condition("Stalled").unwrap().reason != "Failed"
            })
            .collect();
        assert!(
            stalled.is_empty(),
            "{}: Stalled=True during the storm; versions seen: {sequence:#?}",
            case.name
        );
        eprintln!(
            "ssm-storms: {} went through {} versions: {:?}",
            case.name,
            versions.len(),
            status_sequence(&versions)
        );
    }

    // Bounded SSM traffic. A hot loop would poll every --poll-interval-min (100 ms) per
    // resource, with up to 3 SDK attempts each: resources × seconds × 10 × 3 calls. Respecting
    // the backoff (100 ms doubling to 1 s, restarted only when SSM's status changes), with each
    // failed call costing at most 3 attempts spread by the SDK's own backoff and cut by the
    // 1.5 s operation timeout, is about 1 to 2 calls per resource and second, storm included.
    // The bound allows twice that, and is still 7.5× under the hot-loop ceiling.
    let resources = CASES.len() as u64;
    let seconds = elapsed.as_secs_f64().ceil().max(1.0) as u64;
    let bound = resources * seconds * CALLS_PER_RESOURCE_SECOND;
    let hot_loop = resources * seconds * 10 * 3;
    eprintln!(
        "ssm-storms: {resources} resources finished {elapsed:.1?} after creation; simulator \
         calls {calls} in all ({} GetCommandInvocation; {calls_before_storm} before a storm of \
         {storm} faults: {SERVER_ERRORS} HTTP 500, {DROPPED} dropped, {SLOW} slow by \
         {SLOW_DELAY:?}); bound {bound} (hot-loop ceiling {hot_loop})",
        sim.calls("GetCommandInvocation")
    );
    assert!(
        calls <= bound,
        "{calls} SSM calls in {elapsed:.1?} for {resources} resources: more than {bound}"
    );

    // Finished means finished: not one more SSM call.
    let before = sim.total_calls();
    observe_quietly(QUIET_WHEN_FINISHED).await;
    let after = sim.total_calls();
    eprintln!(
        "ssm-storms: {} simulator calls in the {QUIET_WHEN_FINISHED:?} after all finished",
        after - before
    );
    assert_eq!(after, before, "SSM calls after every resource finished");

    let metrics = operator.metrics().await;
    let ssm_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ssm_operator_ssm_calls_total"))
        .collect();
    eprintln!("ssm-storms: operator metrics:\n{}", ssm_lines.join("\n"));
    assert!(
        metrics.contains("outcome=\"SsmUnavailable\""),
        "the storm counted in /metrics:\n{}",
        ssm_lines.join("\n")
    );
    drop(history);
    operator.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A paused leader

/// Lease of this scenario (in the world's namespace, so unique to it).
const LEASE_NAME: &str = "ssm-operator-e2e-paused-leader";
/// --lease-duration.
const LEASE_DURATION: Duration = Duration::from_secs(4);
/// Allowed on top of the Lease duration for the resumed leader to step down.
const STEP_DOWN_MARGIN: Duration = Duration::from_secs(5);
/// How long after SIGCONT the old leader is watched writing nothing (a deliberate window).
const WATCH_AFTER_RESUME: Duration = Duration::from_secs(5);
/// Simulator latency: keeps an SSM call in flight when the leader is paused.
const SSM_LATENCY: Duration = Duration::from_millis(800);
const PAUSED_NAME: &str = "paused-leader";

/// True once process `pid` (a child not reaped yet) has exited.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: Z (zombie) or X (dead).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// The operator's `ssm_operator_status_writes_total`, `None` if it does not answer within a
/// second (never called while the process is stopped: it would not answer at all).
async fn status_writes(operator: &Operator) -> Option<u64> {
    let url = format!("{}/metrics", operator.http);
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "1", &url])
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("ssm_operator_status_writes_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// Events reported by `instance` in the world's namespace: name → (resourceVersion, summary).
async fn events_by(world: &World, instance: &str) -> BTreeMap<String, (String, String)> {
    all_events(world)
        .await
        .into_iter()
        .filter(|e| e.reporting_instance.as_deref() == Some(instance))
        .map(|e| {
            let summary = describe_event(&e);
            (
                e.name_any(),
                (e.resource_version().unwrap_or_default(), summary),
            )
        })
        .collect()
}

async fn all_events(world: &World) -> Vec<Event> {
    Api::<Event>::namespaced(world.client.clone(), &world.namespace)
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
}

fn describe_event(e: &Event) -> String {
    format!(
        "{} by {} at {:?} (series {:?})",
        e.reason.as_deref().unwrap_or("-"),
        e.reporting_instance.as_deref().unwrap_or("-"),
        e.event_time.as_ref().map(|t| t.0.to_string()),
        e.series.as_ref().map(|s| s.count)
    )
}

pub async fn leader_paused_with_reconciles_in_flight_writes_nothing_after_resuming(
    cluster: Arc<TestCluster>,
) {
    let world = World::new(cluster, "paused-leader").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_latency(SSM_LATENCY);

    let (leader, follower, leader_id, follower_id) =
        leader_and_follower(&world, &sim.endpoint(), LEASE_NAME, LEASE_DURATION).await;

    let history = History::start(&world).await;
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(Duration::from_secs(1), Status::InProgress)
                    .step(Duration::from_secs(6), Status::Success)
                    .stdout("patched\n"),
            ),
        ),
    );
    world.create(PAUSED_NAME, spec(None)).await;

    // The leader wrote InProgress and recorded its Event (which comes after the write), so no
    // write of it is on the wire any more.
    poll_until(&format!("{leader_id}'s InProgress Event"), || async {
        events_by(&world, leader_id)
            .await
            .values()
            .any(|(_, summary)| summary.starts_with("InProgress "))
            .then_some(())
    })
    .await;
    world.wait_status(PAUSED_NAME, "InProgress").await;

    // Pause it while its next poll is in flight: the call has reached the simulator, whose
    // answer takes SSM_LATENCY. Only the leader calls SSM. Its status-write count is read in
    // that window too, so it cannot change before the stop; should the machine be so slow
    // that the answer may have come back (or a write slipped in) by the time the stop lands,
    // resume it at once (far within the Lease) and try again on its next call.
    let mut tries = 0;
    let (writes_before, paused) = loop {
        tries += 1;
        assert!(
            tries <= 5,
            "could not pause {leader_id} with an SSM call in flight in 5 tries"
        );
        let calls = sim.total_calls();
        let waiting = Instant::now();
        while sim.total_calls() == calls {
            assert!(
                waiting.elapsed() < DEADLINE,
                "{leader_id} made no further SSM call after InProgress"
            );
            tokio::time::sleep(ms(5)).await;
        }
        let arrived = Instant::now();
        let logged = leader.log().matches("status updated").count();
        let writes = status_writes(&leader)
            .await
            .expect("the leader's /metrics before the pause");
        signal(leader.pid(), "-STOP");
        let paused = Instant::now();
        let in_flight = paused - arrived < SSM_LATENCY - ms(100)
            && sim.total_calls() == calls + 1
            && leader.log().matches("status updated").count() == logged;
        if in_flight {
            break (writes, paused);
        }
        signal(leader.pid(), "-CONT");
        eprintln!(
            "paused-leader: the stop landed {:?} after the call arrived; trying again",
            paused - arrived
        );
    };
    eprintln!(
        "paused-leader: {leader_id} paused with an SSM call in flight, after \
         {writes_before} status writes"
    );

    // The follower takes over once the Lease expires and finishes the job.
    wait_log(&follower, follower_id, "leading: starting controllers").await;
    eprintln!(
        "paused-leader: {follower_id} leads {:.1?} after the pause",
        paused.elapsed()
    );
    poll_until(&format!("{follower_id}'s Success Event"), || async {
        events_by(&world, follower_id)
            .await
            .values()
            .any(|(_, summary)| summary.starts_with("Success "))
            .then_some(())
    })
    .await;
    let done = world.wait_condition(PAUSED_NAME, "Ready", "True").await;
    assert_eq!(ssm_status(&done), Some("Success"));

    // Resume the old leader; from now on it must write nothing.
    let events_before = events_by(&world, leader_id).await;
    let log_len = leader.log().len();
    let resumed_at = SystemTime::now();
    signal(leader.pid(), "-CONT");
    let resumed = Instant::now();
    eprintln!(
        "paused-leader: {leader_id} resumed after {:.1?} paused",
        resumed - paused
    );

    // Until it has stepped down and the window is over: sample its /metrics while it serves.
    let step_down_limit = LEASE_DURATION + STEP_DOWN_MARGIN;
    let mut stepped_down = None;
    let mut writes_seen: Vec<u64> = Vec::new();
    loop {
        let since = resumed.elapsed();
        let gone = exited(leader.pid());
        if stepped_down.is_none() {
            let new_log = leader.log().get(log_len..).unwrap_or_default().to_string();
            if gone {
                stepped_down = Some((since, "exited"));
            } else if new_log.contains("lost leadership") {
                stepped_down = Some((since, "logged lost leadership"));
            }
        }
        if !gone {
            if let Some(n) = status_writes(&leader).await {
                if writes_seen.last() != Some(&n) {
                    writes_seen.push(n);
                }
            }
        }
        let window_over = since >= WATCH_AFTER_RESUME;
        if window_over && (stepped_down.is_some() || since > step_down_limit) {
            break;
        }
        tokio::time::sleep(ms(100)).await;
    }
    let watched = resumed.elapsed();
    let log_after = leader.log().get(log_len..).unwrap_or_default().to_string();

    // (a) No Event created or updated by the old leader since it resumed.
    let events_after = events_by(&world, leader_id).await;
    let new_events: Vec<String> = events_after
        .iter()
        .filter(|(name, (version, _))| {
            events_before
                .get(*name)
                .is_none_or(|(before, _)| before != version)
        })
        .map(|(name, (_, summary))| format!("{name}: {summary}"))
        .collect();
    let all: Vec<String> = all_events(&world)
        .await
        .iter()
        .map(describe_event)
        .collect();

    // (b) The status never went back after Success, and Ready never flipped again.
    let versions = history.of(PAUSED_NAME);
    let sequence = status_sequence(&versions);
    let first_success = versions
        .iter()
        .position(|s| s.status.as_deref() == Some("Success"));
    let after_success: Vec<String> = first_success
        .map(|i| {
            versions[i..]
                .iter()
                .filter(|s| s.status.as_deref() != Some("Success"))
                .map(|s| {
                    format!(
                        "{} at +{:.1?} from the resume",
                        s.status.as_deref().unwrap_or("-"),
                        s.at.saturating_duration_since(resumed)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let ready_since = versions.iter().find_map(|s| {
        s.condition("Ready")
            .filter(|c| c.status == "True")
            .map(|c| c.since.as_str())
    });
    let ready_changes: Vec<String> = versions
        .iter()
        .filter_map(|s| s.condition("Ready"))
        .skip_while(|c| c.status != "True")
        .filter(|c| c.status != "True" || Some(c.since.as_str()) != ready_since)
        .map(|c| format!("Ready={} since {}", c.status, c.since))
        .collect();

    // (c) Its status-write counter did not move while it still served.
    let writes_after: Vec<u64> = writes_seen
        .iter()
        .copied()
        .filter(|&n| n != writes_before)
        .collect();
    let logged_writes_after = log_after.matches("status updated").count();

    eprintln!(
        "paused-leader: watched {watched:.1?} after the resume; {leader_id} {}; its \
         ssm_operator_status_writes_total samples {writes_seen:?} (was {writes_before}); \
         status sequence {sequence:?}; Events: {all:#?}",
        match stepped_down {
            Some((after, how)) => format!("{how} {after:.1?} after the resume"),
            None => "did not step down".into(),
        },
    );

    let mut failures = Vec::new();
    if !new_events.is_empty() {
        failures.push(format!(
            "(a) {leader_id} created or updated Events after SIGCONT (resumed at \
             {resumed_at:?}): {new_events:#?}"
        ));
    }
    if first_success.is_none() {
        failures.push(format!("(b) the watch never saw Success: {sequence:?}"));
    }
    if !after_success.is_empty() {
        failures.push(format!(
            "(b) the status went back after Success: {after_success:?}; sequence {sequence:?}"
        ));
    }
    if !ready_changes.is_empty() {
        failures.push(format!(
            "(b) Ready changed after it turned True at {ready_since:?}: {ready_changes:?}"
        ));
    }
    if !writes_after.is_empty() || logged_writes_after > 0 {
        failures.push(format!(
            "(c) {leader_id} wrote status after SIGCONT: status_writes_total {writes_before} \
             before the pause, samples after {writes_seen:?}; {logged_writes_after} \
             \"status updated\" log lines after the resume"
        ));
    }
    match stepped_down {
        Some((after, _)) if after <= step_down_limit => {}
        other => failures.push(format!(
            "(d) {leader_id} did not exit or log lost leadership within {step_down_limit:?} \
             of SIGCONT: {other:?}"
        )),
    }
    assert!(
        failures.is_empty(),
        "the resumed leader was not fenced:\n{}\n--- {leader_id}'s log after SIGCONT ---\n{}",
        failures.join("\n"),
        log_after
    );

    drop(history);
    follower.stop().await;
}
