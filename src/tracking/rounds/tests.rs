//! Unit tests of the tracker's bookkeeping and rounds (no SSM calls).

use super::*;

use futures::{FutureExt, Stream};
use kube::runtime::reflector::ObjectRef;

use crate::api::CommandInvocation;

use crate::aws::ssm::Ssm;
use crate::runtime::metrics::Metrics;
use crate::tracking::tracker::HINT_COALESCE;

const COMMAND_A: &str = "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11";
const COMMAND_B: &str = "0b7c8d9e-1f2a-4b3c-8d4e-5f6a7b8c9d0e";

/// A tracker whose `Ssm` points nowhere: tracking, forgetting and retaining never call SSM
/// (no rounds run here).
fn tracker() -> (Tracker, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let ssm = Arc::new(Ssm::new(
        aws_config::SdkConfig::builder().build(),
        metrics.clone(),
        1000.0,
    ));
    let intervals = PollIntervals {
        min: Duration::from_secs(2),
        max: Duration::from_secs(30),
    };
    let tracker = Tracker::new(
        ssm,
        intervals,
        Duration::from_secs(300),
        Duration::from_secs(30),
        metrics.clone(),
    );
    (tracker, metrics)
}

fn key(command_id: &str, instance_id: &str) -> InvocationKey {
    InvocationKey {
        region: None,
        command_id: command_id.into(),
        instance_id: instance_id.into(),
        plugin_name: None,
        role: None,
    }
}

/// Tracks resource `uid` (named after it, in `namespace`) for `command_id` on its own node.
fn track(tracker: &Tracker, namespace: &str, uid: &str, command_id: &str) {
    let object = ObjectRef::new(&format!("ci-{uid}")).within(namespace);
    tracker.track(
        uid,
        object,
        &key(command_id, &format!("i-{uid}")),
        1,
        Instant::now(),
    );
}

fn commands(tracker: &Tracker) -> usize {
    tracker.state().commands.len()
}

/// The value of an unlabelled gauge in the process metrics.
fn gauge(metrics: &Metrics, name: &str) -> String {
    let text = metrics.encode().expect("metrics encode");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .to_string()
}

#[test]
fn a_forgotten_resource_leaves_the_poll_book_and_an_empty_command_goes() {
    let (tracker, metrics) = tracker();
    track(&tracker, "ops", "a1", COMMAND_A);
    track(&tracker, "ops", "a2", COMMAND_A);
    track(&tracker, "dev", "b1", COMMAND_B);
    assert_eq!((tracker.len(), commands(&tracker)), (3, 2));
    assert_eq!(gauge(&metrics, "ssm_operator_poll_book_entries"), "3");
    assert_eq!(gauge(&metrics, "ssm_operator_tracked_commands"), "2");

    // B's only resource is deleted: its command is no longer asked about at all.
    tracker.forget("b1");
    assert_eq!((tracker.len(), commands(&tracker)), (2, 1));
    assert_eq!(gauge(&metrics, "ssm_operator_poll_book_entries"), "2");
    assert_eq!(gauge(&metrics, "ssm_operator_tracked_commands"), "1");
    let (due, _) = tracker.start_due(Instant::now() + Duration::from_secs(3600));
    let due: Vec<&str> = due.iter().map(|(k, _)| k.command_id.as_str()).collect();
    assert_eq!(
        due,
        [COMMAND_A],
        "no round for the deleted resource's command"
    );

    // One of A's two: A stays for the other.
    tracker.forget("a1");
    assert_eq!((tracker.len(), commands(&tracker)), (1, 1));
    // Unknown (or already forgotten) uids change nothing.
    tracker.forget("a1");
    tracker.forget("never-tracked");
    assert_eq!(tracker.len(), 1);

    tracker.forget("a2");
    assert!(tracker.is_empty());
    assert_eq!(commands(&tracker), 0);
    assert_eq!(gauge(&metrics, "ssm_operator_poll_book_entries"), "0");
    assert_eq!(gauge(&metrics, "ssm_operator_tracked_commands"), "0");
}

#[test]
fn retain_keeps_only_live_resources_across_namespaces() {
    let (tracker, metrics) = tracker();
    track(&tracker, "ops", "a1", COMMAND_A);
    track(&tracker, "dev", "a2", COMMAND_A);
    track(&tracker, "ops", "b1", COMMAND_B);
    track(&tracker, "dev", "b2", COMMAND_B);
    // A re-list shows a1 and b2 only: a2 and b1 were deleted while the watch was down.
    let live: HashSet<String> = ["a1", "b2", "not-tracked"].map(String::from).into();
    tracker.retain(&live);
    assert_eq!((tracker.len(), commands(&tracker)), (2, 2));
    let members: HashSet<String> = tracker.state().command_of.keys().cloned().collect();
    assert_eq!(members, ["a1", "b2"].map(String::from).into());
    assert_eq!(gauge(&metrics, "ssm_operator_poll_book_entries"), "2");

    // Nothing live: nothing tracked, no command left to ask about.
    tracker.retain(&HashSet::new());
    assert!(tracker.is_empty());
    assert_eq!(commands(&tracker), 0);
    assert_eq!(gauge(&metrics, "ssm_operator_tracked_commands"), "0");
    let (due, next) = tracker.start_due(Instant::now() + Duration::from_secs(3600));
    assert!(due.is_empty() && next.is_none(), "no round at all");
}

#[test]
fn a_forgotten_resource_is_not_woken_any_more() {
    let (tracker, _) = tracker();
    let mut wakes = Box::pin(tracker.wakes(Some("ops".into())));
    track(&tracker, "ops", "a1", COMMAND_A);
    track(&tracker, "ops", "a2", COMMAND_A);
    tracker.forget("a1");
    tracker.wake_namespace("ops");
    let woken = wakes.next().now_or_never().flatten().expect("a2 woken");
    assert_eq!(woken.name, "ci-a2");
    assert!(
        wakes.next().now_or_never().is_none(),
        "nothing else woken: the deleted a1 is gone"
    );
}

#[test]
fn a_resource_moved_to_another_command_leaves_no_member_behind() {
    let (tracker, _) = tracker();
    track(&tracker, "ops", "a1", COMMAND_A);
    // Its spec now names command B: the old command, left without members, goes.
    track(&tracker, "ops", "a1", COMMAND_B);
    assert_eq!((tracker.len(), commands(&tracker)), (1, 1));
    let only = tracker.state().commands.keys().next().cloned();
    assert_eq!(only.map(|k| k.command_id), Some(COMMAND_B.to_string()));
    tracker.forget("a1");
    assert_eq!((tracker.len(), commands(&tracker)), (0, 0));
}

fn command_key(command_id: &str) -> CommandKey {
    CommandKey {
        region: None,
        role: None,
        command_id: command_id.into(),
    }
}

fn answer(uid: &str, status: &str, elapsed: &str) -> (Step, Result<Invocation, SsmError>) {
    let step = Step {
        instance_id: format!("i-{uid}"),
        plugin_name: None,
    };
    let invocation = Invocation {
        status: status.into(),
        status_details: status.into(),
        execution_elapsed_time: elapsed.into(),
        ..Invocation::default()
    };
    (step, Ok(invocation))
}

fn woken<S: Stream<Item = ObjectRef<CommandInvocation>> + Unpin>(wakes: &mut S) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(Some(object)) = wakes.next().now_or_never() {
        names.push(object.name);
    }
    names.sort();
    names
}

#[test]
fn a_running_step_whose_elapsed_time_ticked_wakes_nobody() {
    let (tracker, _) = tracker();
    let mut wakes = Box::pin(tracker.wakes(None));
    track(&tracker, "ops", "a1", COMMAND_A);
    let key = command_key(COMMAND_A);
    let asked = Time(Timestamp::now());
    assert!(
        tracker
            .absorb(
                &key,
                vec![answer("a1", "InProgress", "PT1S")],
                &asked,
                false
            )
            .news
    );
    assert_eq!(woken(&mut wakes), ["ci-a1"]);
    assert!(
        !tracker
            .absorb(
                &key,
                vec![answer("a1", "InProgress", "PT3S")],
                &asked,
                false
            )
            .news,
        "not news: the round interval may grow"
    );
    assert!(woken(&mut wakes).is_empty());
    assert!(
        tracker
            .absorb(&key, vec![answer("a1", "Success", "PT4S")], &asked, false)
            .news
    );
    assert_eq!(woken(&mut wakes), ["ci-a1"]);
}

#[test]
fn a_resource_tracked_while_its_commands_round_runs_joins_the_next_round_at_the_first_interval() {
    let (tracker, _) = tracker();
    let key = command_key(COMMAND_A);
    track(&tracker, "ops", "r1", COMMAND_A);
    let started = Instant::now();
    let (due, _) = tracker.start_due(started);
    assert_eq!(
        due,
        [(key.clone(), RoundKind::Regular)],
        "a new command is due at once"
    );
    let round = tracker
        .take_round(&key, RoundKind::Regular)
        .expect("tracked");
    assert_eq!(round.steps.len(), 1, "the round asks about r1");
    // r2 is created meanwhile: no Get of its own, it joins the next round.
    track(&tracker, "ops", "r2", COMMAND_A);
    let asked = Time(Timestamp::now());
    // The running round brought no news (it would have backed off to 4 s).
    tracker.keep(
        &key,
        vec![answer("r1", "InProgress", "PT1S")],
        asked.clone(),
        false,
        0,
        RoundKind::Regular,
    );
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert!(due.is_empty(), "no Get for r2: {due:?}");
    let next = tracker.state().commands[&key].clock.due;
    assert!(
        next <= Instant::now() + Duration::from_millis(2400),
        "the next round comes at the first interval (±20 %), not later"
    );
    let (due, _) = tracker.start_due(next);
    assert_eq!(due, [(key.clone(), RoundKind::Regular)]);
    let round = tracker
        .take_round(&key, RoundKind::Regular)
        .expect("tracked");
    assert_eq!(round.steps.len(), 2, "the round asks about r2 too");
}

#[test]
fn new_resources_of_a_backed_off_command_start_with_a_get_and_the_rest_join_the_round_it_brings() {
    let (tracker, _) = tracker();
    let key = command_key(COMMAND_A);
    track(&tracker, "ops", "r00", COMMAND_A);
    let (due, _) = tracker.start_due(Instant::now());
    assert_eq!(due, [(key.clone(), RoundKind::Regular)]);
    tracker
        .take_round(&key, RoundKind::Regular)
        .expect("tracked");
    let asked = Time(Timestamp::now());
    tracker.keep(
        &key,
        vec![answer("r00", "InProgress", "PT1S")],
        asked.clone(),
        true,
        0,
        RoundKind::Regular,
    );
    // Quiet rounds since: the next one is 16 s away.
    let backed_off = Instant::now() + Duration::from_secs(16);
    tracker
        .state()
        .commands
        .get_mut(&key)
        .expect("tracked")
        .clock = crate::tracking::schedule::RoundClock::due_at(backed_off);

    track(&tracker, "ops", "r01", COMMAND_A);
    let soon = Instant::now() + HINT_COALESCE;
    let (due, _) = tracker.start_due(soon);
    assert_eq!(due, [(key.clone(), RoundKind::Gets)], "r01 is read at once");
    let round = tracker.take_round(&key, RoundKind::Gets).expect("tracked");
    assert_eq!(round.hinted, HashSet::from(["i-r01".to_string()]));
    tracker.keep(&key, vec![], asked, false, 0, RoundKind::Gets);

    for i in 2..=14 {
        track(&tracker, "ops", &format!("r{i:02}"), COMMAND_A);
    }
    let (due, next) = tracker.start_due(soon + HINT_COALESCE);
    assert!(due.is_empty(), "they join the round r01 brought: {due:?}");
    let next = next.expect("a round is due");
    assert!(
        next <= Instant::now() + Duration::from_secs(2),
        "that round comes within the first interval, not in 16 s"
    );
    let (due, _) = tracker.start_due(next);
    assert_eq!(due, [(key.clone(), RoundKind::Regular)]);
    let round = tracker
        .take_round(&key, RoundKind::Regular)
        .expect("tracked");
    assert_eq!(round.steps.len(), 15, "one walk reads all fifteen");
}

/// An SSM event about `node` of `command_id` with `status`.
fn event(tracker: &Tracker, command_id: &str, node: &str, status: &str) {
    tracker.hint(&crate::aws::eventbridge::Hint {
        region: None,
        command_id: command_id.into(),
        instance_id: Some(node.into()),
        status: status.into(),
    });
}

/// One regular round of `key` that asked about every step and brought news, over: the
/// next one is the first interval away.
fn regular_round_with_news(tracker: &Tracker, key: &CommandKey) {
    tracker
        .take_round(key, RoundKind::Regular)
        .expect("tracked");
    tracker.keep(
        key,
        vec![],
        Time(Timestamp::now()),
        true,
        0,
        RoundKind::Regular,
    );
}

/// Tracks `count` resources `f000`, `f001`, ... of `command_id`, a fleet's.
fn track_fleet(tracker: &Tracker, command_id: &str, count: usize) {
    for i in 0..count {
        track(tracker, "ops", &format!("f{i:03}"), command_id);
    }
}

#[test]
fn under_push_a_fleet_resource_whose_node_was_heard_running_waits_for_its_end_event() {
    let (tracker, _) = tracker();
    // The fleet's resources, read at start-up.
    let key = quiet_fleet_under_push(&tracker);
    let quiet = Instant::now() + HINT_COALESCE;

    // Events before their resources: r1's node is running, r2's ended.
    event(&tracker, COMMAND_A, "i-r1", "InProgress");
    event(&tracker, COMMAND_A, "i-r2", "Success");
    track(&tracker, "ops", "r1", COMMAND_A);
    track(&tracker, "ops", "r2", COMMAND_A);
    let (due, _) = tracker.start_due(quiet + HINT_COALESCE);
    assert_eq!(due, [(key.clone(), RoundKind::Gets)]);
    let round = tracker.take_round(&key, RoundKind::Gets).expect("tracked");
    assert_eq!(
        round.hinted,
        HashSet::from(["i-r2".to_string()]),
        "the node heard to have ended is read; the running one is not"
    );
    tracker.keep(
        &key,
        vec![],
        Time(Timestamp::now()),
        false,
        0,
        RoundKind::Gets,
    );

    // r1's end event reads it.
    event(&tracker, COMMAND_A, "i-r1", "Failed");
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert_eq!(due, [(key.clone(), RoundKind::Gets)]);
    let round = tracker.take_round(&key, RoundKind::Gets).expect("tracked");
    assert_eq!(round.hinted, HashSet::from(["i-r1".to_string()]));
}

#[test]
fn few_resources_are_read_at_once_under_push_even_with_their_node_heard_running() {
    let (tracker, _) = tracker();
    tracker.push_reachable(true);
    let key = command_key(COMMAND_A);
    event(&tracker, COMMAND_A, "i-r0", "InProgress");
    track(&tracker, "ops", "r0", COMMAND_A);
    regular_round_with_news(&tracker, &key);
    event(&tracker, COMMAND_A, "i-r1", "InProgress");
    track(&tracker, "ops", "r1", COMMAND_A);
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert_eq!(
        due,
        [(key.clone(), RoundKind::Gets)],
        "a pipeline's resource shows its status at once"
    );
}

/// `answer` for the step of resource `uid`, ended `ago` before now.
fn ended(uid: &str, ago: Duration) -> (Step, Result<Invocation, SsmError>) {
    let (step, result) = answer(uid, "Success", "PT1S");
    let end = Timestamp::now()
        .checked_sub(ago)
        .expect("a time after 1970");
    let invocation = Invocation {
        execution_end_date_time: end.to_string(),
        ..result.expect("an answer")
    };
    (step, Ok(invocation))
}

#[test]
fn a_walk_finding_an_end_no_event_announced_brings_rounds_back_to_polling() {
    let (tracker, metrics) = tracker();
    tracker.push_reachable(true);
    let key = command_key(COMMAND_A);
    event(&tracker, COMMAND_A, "i-x", "InProgress");
    track(&tracker, "ops", "r1", COMMAND_A);
    track(&tracker, "ops", "r2", COMMAND_A);
    tracker
        .take_round(&key, RoundKind::Regular)
        .expect("tracked");
    let asked = Time(Timestamp::now());
    tracker.absorb(
        &key,
        vec![
            answer("r1", "InProgress", "PT1S"),
            answer("r2", "InProgress", "PT1S"),
        ],
        &asked,
        true,
    );
    assert!(!tracker.push_lossy(Instant::now()));

    // r2 ended just now (its event may be on its way), r1 ended 10 s ago and no event came.
    let asked = Time(Timestamp::now());
    let fresh = vec![ended("r2", Duration::from_millis(500))];
    let found = tracker.absorb(&key, fresh, &asked, true);
    assert_eq!(
        found.missed, 0,
        "an end within the grace is not a lost event"
    );
    event(&tracker, COMMAND_A, "i-r1", "Success");
    let found = tracker.absorb(
        &key,
        vec![ended("r1", Duration::from_secs(10))],
        &asked,
        true,
    );
    assert_eq!(found.missed, 0, "an end its event announced is not lost");
    // r5's end event came and a round of Gets took it, not yet answered when a walk sees it.
    track(&tracker, "ops", "r5", COMMAND_A);
    tracker.absorb(
        &key,
        vec![answer("r5", "InProgress", "PT1S")],
        &asked,
        false,
    );
    event(&tracker, COMMAND_A, "i-r5", "Success");
    tracker.take_round(&key, RoundKind::Gets);
    let walked = vec![ended("r5", Duration::from_secs(10))];
    let found = tracker.absorb(&key, walked, &asked, true);
    assert_eq!(found.missed, 0, "its event came, only its read is slow");

    track(&tracker, "ops", "r3", COMMAND_A);
    track(&tracker, "ops", "r4", COMMAND_A);
    tracker.absorb(
        &key,
        vec![answer("r4", "InProgress", "PT1S")],
        &asked,
        false,
    );
    tracker.absorb(
        &key,
        vec![answer("r3", "InProgress", "PT1S")],
        &asked,
        false,
    );
    let found = tracker.absorb(
        &key,
        vec![ended("r3", Duration::from_secs(10))],
        &asked,
        true,
    );
    assert_eq!(found.missed, 1);
    tracker.take_round(&key, RoundKind::Regular);
    tracker.keep(&key, vec![], asked, true, found.missed, RoundKind::Regular);
    assert!(
        tracker.push_lossy(Instant::now()),
        "the queue is seen losing events"
    );
    let text = metrics.encode().expect("metrics encode");
    assert!(
        text.contains("ssm_operator_push_messages_total{kind=\"missed\"} 1"),
        "{text}"
    );
    let next = tracker.state().commands[&key].clock.due;
    assert!(
        next <= Instant::now() + Duration::from_millis(2400),
        "the next round comes at the polling interval, not the 30 s backstop"
    );
}

fn hint_node(tracker: &Tracker, uid: &str) {
    tracker.hint(&crate::aws::eventbridge::Hint {
        region: None,
        command_id: COMMAND_A.into(),
        instance_id: Some(format!("i-{uid}")),
        status: "Success".into(),
    });
}

#[test]
fn a_hinted_node_is_read_beside_a_running_round_unless_that_needs_a_second_walk() {
    let (tracker, _) = tracker();
    let key = command_key(COMMAND_A);
    for uid in ["r1", "r2", "r3"] {
        track(&tracker, "ops", uid, COMMAND_A);
    }
    let (due, _) = tracker.start_due(Instant::now());
    assert_eq!(
        due,
        [(key.clone(), RoundKind::Regular)],
        "a new command's regular round"
    );
    tracker
        .take_round(&key, RoundKind::Regular)
        .expect("tracked");

    // r1's node finished while the round walks: one Get reads it, without waiting.
    hint_node(&tracker, "r1");
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert_eq!(due, [(key.clone(), RoundKind::Gets)]);
    let round = tracker.take_round(&key, RoundKind::Gets).expect("tracked");
    assert_eq!(round.hinted, HashSet::from(["i-r1".to_string()]));

    // The hint round ends; two nodes finish, more than the one page a walk of them costs:
    // that read waits for the running walk to end, and the loop does not spin meanwhile.
    let asked = Time(Timestamp::now());
    tracker.keep(
        &key,
        vec![answer("r1", "Success", "PT1S")],
        asked.clone(),
        true,
        0,
        RoundKind::Gets,
    );
    hint_node(&tracker, "r2");
    hint_node(&tracker, "r3");
    let later = Instant::now() + HINT_COALESCE;
    let (due, next) = tracker.start_due(later);
    assert!(due.is_empty(), "{due:?}");
    assert_eq!(next, None, "nothing to wait for but the running round");

    // The walk ends: the hinted nodes are read now.
    tracker.keep(&key, vec![], asked, true, 0, RoundKind::Regular);
    let (due, _) = tracker.start_due(later);
    assert_eq!(due, [(key, RoundKind::HintWalk)], "one walk reads both");
}

#[test]
fn a_terminal_answer_is_never_replaced_by_an_older_read_of_a_running_step() {
    let (tracker, _) = tracker();
    let mut wakes = Box::pin(tracker.wakes(None));
    track(&tracker, "ops", "a1", COMMAND_A);
    let key = command_key(COMMAND_A);
    let asked = Time(Timestamp::now());
    assert!(
        tracker
            .absorb(&key, vec![answer("a1", "Success", "PT4S")], &asked, false)
            .news
    );
    assert_eq!(woken(&mut wakes), ["ci-a1"]);
    // A walk page read before the node finished arrives after the Get that saw it finish.
    assert!(
        !tracker
            .absorb(
                &key,
                vec![answer("a1", "InProgress", "PT3S")],
                &asked,
                false
            )
            .news
    );
    // Nor does a read that failed (a throttle) take the final answer away.
    let (step, _) = answer("a1", "Success", "PT4S");
    let throttled = Err(SsmError::Throttled("Rate exceeded".into()));
    assert!(
        !tracker
            .absorb(&key, vec![(step, throttled)], &asked, false)
            .news
    );
    assert!(woken(&mut wakes).is_empty());
    let kept = tracker.state().commands[&key]
        .answers
        .values()
        .next()
        .cloned();
    let status = kept.and_then(|a| a.result.clone().ok()).map(|i| i.status);
    assert_eq!(status.as_deref(), Some("Success"));
}

/// The operator's SSM access pointed at `sim`.
async fn ssm_at(sim: &ssm_sim::Simulator) -> Arc<Ssm> {
    use aws_sdk_ssm::config::Credentials;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(sim.endpoint())
        .load()
        .await;
    Arc::new(Ssm::new(sdk, Arc::new(Metrics::new()), 1000.0))
}

/// A tracker asking `sim`, whose rounds come a minute apart: within a test, only what the test
/// starts (or a hint) reads SSM.
async fn tracker_at(sim: &ssm_sim::Simulator) -> Tracker {
    let intervals = PollIntervals {
        min: Duration::from_secs(60),
        max: Duration::from_secs(60),
    };
    let (recheck, backstop) = (Duration::from_secs(300), Duration::from_secs(30));
    let metrics = Arc::new(Metrics::new());
    Tracker::new(ssm_at(sim).await, intervals, recheck, backstop, metrics)
}

fn whole_step(node: &str) -> Step {
    Step {
        instance_id: format!("i-{node}"),
        plugin_name: None,
    }
}

/// The tracker's answer for `step` of `command_id`, once it has one.
async fn answer_for(tracker: &Tracker, command_id: &str, step: &Step) -> Invocation {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let known = tracker
            .state()
            .commands
            .get(&command_key(command_id))
            .and_then(|c| c.answers.get(step).cloned());
        if let Some(answer) = known {
            return answer.result.clone().expect("an answer, not an error");
        }
        assert!(Instant::now() < deadline, "no answer for {step:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An `AWS-RunRemoteScript`-like command: `node1` fails in its second step, `node2`
/// succeeds, `node3` succeeds with more output than List shows.
fn remote_script() -> ssm_sim::Command {
    use ssm_sim::{Command, Invocation as Node, Plugin};
    let download = || Plugin::succeeding("downloadContent", Duration::ZERO).stdout("got it\n");
    Command::new(COMMAND_A)
        .document("AWS-RunRemoteScript", "1")
        .invocation(
            Node::new("i-node1").plugin(download()).plugin(
                Plugin::failing_at("runShellScript", Duration::ZERO, Duration::ZERO, 2)
                    .stderr("boom\n"),
            ),
        )
        .invocation(
            Node::new("i-node2")
                .plugin(download())
                .plugin(Plugin::succeeding("runShellScript", Duration::ZERO).stdout("ran\n")),
        )
        .invocation(Node::new("i-node3").plugin(download()).plugin(
            Plugin::succeeding("runShellScript", Duration::ZERO).stdout("y".repeat(30_000)),
        ))
}

#[tokio::test]
async fn a_step_without_a_name_on_several_steps_is_never_refused_for_want_of_one() {
    let sim = ssm_sim::Simulator::start().await.expect("simulator");
    sim.add_command(remote_script());
    let tracker = tracker_at(&sim).await;
    track(&tracker, "ops", "node1", COMMAND_A);
    let key = command_key(COMMAND_A);
    assert!(!tracker.is_multi_step(&key), "nothing is known yet");

    // A Get without a step name is refused (InvalidPluginName): not the answer, the node is
    // read from its listing instead, and the command is known to have several steps.
    let node1 = tracker.get(&key, &whole_step("node1")).await.expect("read");
    assert_eq!(sim.calls("GetCommandInvocation"), 1);
    assert!(tracker.is_multi_step(&key));
    assert_eq!(node1.status, "Failed", "the invocation's status");
    assert_eq!(node1.plugin_name, "runShellScript", "the deciding step");
    assert_eq!(node1.response_code, 2);
    assert_eq!(node1.standard_error_content, "boom\n");
    assert_eq!(node1.steps.as_ref().map(Vec::len), Some(2));

    // From now on no Get goes out without a step name: a new node is read from its listing
    // (one call, as a Get), a regular round from the walk.
    let tracker = Arc::new(tracker);
    tokio::spawn(tracker.clone().run());
    track(&tracker, "ops", "node2", COMMAND_A);
    let node2 = answer_for(&tracker, COMMAND_A, &whole_step("node2")).await;
    assert_eq!(
        (node2.status.as_str(), node2.plugin_name.as_str()),
        ("Success", "runShellScript")
    );
    assert_eq!(node2.standard_output_content, "ran\n");
    assert_eq!(sim.calls("GetCommandInvocation"), 1, "no Get for node2");

    // The deciding step's output may be cut in List: one Get naming that step reads it all.
    track(&tracker, "ops", "node3", COMMAND_A);
    let node3 = answer_for(&tracker, COMMAND_A, &whole_step("node3")).await;
    assert_eq!(node3.status, "Success");
    assert_eq!(
        node3.standard_output_content.len(),
        24_000,
        "Get's full text"
    );
    assert_eq!(
        sim.calls("GetCommandInvocation"),
        2,
        "one named Get for node3"
    );
}

#[tokio::test]
async fn a_walk_answers_steps_without_a_name_as_a_whole_and_marks_the_command() {
    let sim = ssm_sim::Simulator::start().await.expect("simulator");
    sim.add_command(remote_script());
    let tracker = tracker_at(&sim).await;
    for node in ["node1", "node2", "node3"] {
        track(&tracker, "ops", node, COMMAND_A);
    }
    let key = command_key(COMMAND_A);
    let steps: HashSet<Step> = ["node1", "node2", "node3"].map(whole_step).into();
    let (walked, error) = tracker.walk(&key, &steps, &HashSet::new()).await;
    assert_eq!(error, None);
    assert!(tracker.is_multi_step(&key));
    assert!(walked.unclear.is_empty() && walked.not_listed.is_empty());
    let cut: Vec<(&str, &str)> = walked
        .outputs
        .iter()
        .map(|(step, _, name)| (step.instance_id.as_str(), name.as_str()))
        .collect();
    assert_eq!(
        cut,
        [("i-node3", "runShellScript")],
        "only node3's may be cut"
    );
    let node1 = answer_for(&tracker, COMMAND_A, &whole_step("node1")).await;
    assert_eq!((node1.status.as_str(), node1.response_code), ("Failed", 2));
    let completed = tracker.complete_outputs(&key, walked.outputs).await;
    let (_, full) = &completed[0];
    assert_eq!(
        full.as_ref().map(|i| i.standard_output_content.len()),
        Ok(24_000)
    );
    assert_eq!(sim.calls("GetCommandInvocation"), 1, "the named Get only");
}

/// A fleet of `FLEET` resources of command A under push, read once (nothing due now).
fn quiet_fleet_under_push(tracker: &Tracker) -> CommandKey {
    tracker.push_reachable(true);
    let key = command_key(COMMAND_A);
    event(tracker, COMMAND_A, "i-other", "InProgress");
    track_fleet(tracker, COMMAND_A, crate::tracking::plan::FLEET);
    regular_round_with_news(tracker, &key);
    assert!(tracker
        .start_due(Instant::now() + HINT_COALESCE)
        .0
        .is_empty());
    key
}

/// Tracks resource `uid` of command A and returns what the tracker knows of it.
fn track_known(tracker: &Tracker, uid: &str) -> Option<Arc<Answer>> {
    let object = ObjectRef::new(&format!("ci-{uid}")).within("ops");
    let tracked = tracker.track(
        uid,
        object,
        &key(COMMAND_A, &format!("i-{uid}")),
        1,
        Instant::now(),
    );
    tracked.answer
}

fn status_of(answer: Option<Arc<Answer>>) -> Option<String> {
    answer.and_then(|a| a.result.as_ref().ok().map(|i| i.status.clone()))
}

#[test]
fn a_fleets_node_that_ends_before_its_resource_is_read_at_its_event_and_the_resource_takes_that_answer(
) {
    let (tracker, _) = tracker();
    let key = quiet_fleet_under_push(&tracker);

    // The end event of a node no resource tracks yet: it is read now, not when its resource
    // comes.
    event(&tracker, COMMAND_A, "i-late", "Failed");
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert_eq!(due, [(key.clone(), RoundKind::Gets)]);
    let round = tracker.take_round(&key, RoundKind::Gets).expect("tracked");
    assert_eq!(round.ahead, HashSet::from(["i-late".to_string()]));
    let long_ago = Timestamp::now()
        .checked_sub(Duration::from_secs(300))
        .expect("a time after 1970");
    let asked = Time(long_ago);
    tracker.keep_ahead(&key, vec![answer("late", "Failed", "PT3S")], &asked);
    tracker.done_ahead(&key, &round.ahead);
    tracker.keep(&key, vec![], asked, false, 0, RoundKind::Gets);

    // Its resource comes (5 minutes later): it has its final answer at once, and SSM is not
    // asked again. The answer counts as read when the resource took it, so its status
    // (and a TTL after Finished) never dates from before the resource.
    let created = Timestamp::now();
    let taken = track_known(&tracker, "late");
    assert_eq!(status_of(taken.clone()).as_deref(), Some("Failed"));
    assert!(taken.is_some_and(|a| a.asked_at.0 >= created));
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert!(due.is_empty(), "{due:?}");
    assert!(tracker.state().commands[&key].unclaimed.is_empty(), "taken");
    // Written and forgotten: its answer goes with it, without waiting for a regular round.
    tracker.forget("late");
    assert!(!tracker.state().commands[&key]
        .answers
        .contains_key(&whole_step("late")));
}

#[test]
fn a_resource_that_comes_while_its_node_is_read_ahead_waits_for_that_read() {
    let (tracker, _) = tracker();
    let mut wakes = Box::pin(tracker.wakes(None));
    let key = quiet_fleet_under_push(&tracker);
    event(&tracker, COMMAND_A, "i-late", "Success");
    event(&tracker, COMMAND_A, "i-lost", "Success");
    tracker.start_due(Instant::now() + HINT_COALESCE);
    let round = tracker.take_round(&key, RoundKind::Gets).expect("tracked");
    assert_eq!(round.ahead.len(), 2);
    // The queue delivers an event again (at least once): no second read either.
    event(&tracker, COMMAND_A, "i-late", "Success");

    // Both resources come while the read runs: no second read of their nodes.
    assert_eq!(track_known(&tracker, "late"), None);
    assert_eq!(track_known(&tracker, "lost"), None);
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert!(due.is_empty(), "{due:?}");

    // The read answers one of them; the other (SSM did not show it yet) is read again.
    let asked = Time(Timestamp::now());
    tracker.keep_ahead(&key, vec![answer("late", "Success", "PT3S")], &asked);
    tracker.done_ahead(&key, &round.ahead);
    tracker.keep(&key, vec![], asked, false, 0, RoundKind::Gets);
    assert_eq!(woken(&mut wakes), ["ci-late"]);
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert_eq!(due, [(key.clone(), RoundKind::Gets)]);
    let round = tracker.take_round(&key, RoundKind::Gets).expect("tracked");
    assert_eq!(round.hinted, HashSet::from(["i-lost".to_string()]));
    assert!(round.ahead.is_empty(), "tracked now");
}

#[test]
fn few_resources_read_nothing_ahead_and_a_fleet_at_most_as_many_nodes_as_resources_came() {
    // A pipeline's one resource of a big command: the other nodes' ends are not read.
    let (tracker, _) = tracker();
    tracker.push_reachable(true);
    let key = command_key(COMMAND_A);
    track(&tracker, "ops", "r0", COMMAND_A);
    regular_round_with_news(&tracker, &key);
    event(&tracker, COMMAND_A, "i-other", "Success");
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert!(due.is_empty(), "{due:?}");

    // A fleet keeps at most as many answers for resources to come as resources came.
    let (fleet_tracker, _) = super::tests::tracker();
    let key = quiet_fleet_under_push(&fleet_tracker);
    let fleet = crate::tracking::plan::FLEET;
    let now = Instant::now();
    {
        let mut state = fleet_tracker.state();
        let command = state.commands.get_mut(&key).expect("tracked");
        for i in 0..fleet + 5 {
            let (step, result) = answer(&format!("n{i}"), "Success", "PT1S");
            let answer = Answer {
                result,
                asked_at: Time(Timestamp::now()),
            };
            command.keep_unclaimed(step.instance_id, answer, now);
        }
        assert_eq!(command.unclaimed.len(), fleet, "capped");
        let (step, result) = answer("running", "InProgress", "PT1S");
        command.unclaimed.clear();
        let running = Answer {
            result,
            asked_at: Time(Timestamp::now()),
        };
        command.keep_unclaimed(step.instance_id, running, now);
        assert!(command.unclaimed.is_empty(), "only final answers wait");
    }
}

#[test]
fn an_end_event_for_a_node_a_walk_already_found_ended_reads_nothing() {
    let (tracker, _) = tracker();
    let key = quiet_fleet_under_push(&tracker);
    let asked = Time(Timestamp::now());
    tracker.absorb(&key, vec![answer("f007", "Success", "PT1S")], &asked, true);
    event(&tracker, COMMAND_A, "i-f007", "Success");
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert!(due.is_empty(), "{due:?}");
    event(&tracker, COMMAND_A, "i-f008", "Success");
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert_eq!(due, [(key, RoundKind::Gets)], "a node not answered yet");
}

#[test]
fn under_push_a_new_resource_does_not_bring_the_backstop_rounds_back() {
    let (tracker, _) = tracker();
    let key = quiet_fleet_under_push(&tracker);
    let before = tracker.state().commands[&key].clock.due;
    event(&tracker, COMMAND_A, "i-small", "Success");
    // Tracked before the read ahead starts: read like a hinted node.
    track(&tracker, "ops", "small", COMMAND_A);
    assert_eq!(
        tracker.state().commands[&key].clock.due,
        before,
        "the regular round stays a backstop"
    );
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert_eq!(due, [(key, RoundKind::Gets)]);
}

/// A walk of every step `key` tracks now, as a regular round makes; it must end without error.
async fn walk_tracked(tracker: &Tracker, key: &CommandKey) {
    let steps: HashSet<Step> = tracker.state().commands[key]
        .members
        .values()
        .map(|m| m.step.clone())
        .collect();
    let (_, error) = tracker.walk(key, &steps, &HashSet::new()).await;
    assert_eq!(error, None);
}

/// A one-step command of `nodes` nodes, every one of them ended.
fn ended_fleet(nodes: &[String]) -> ssm_sim::Command {
    use ssm_sim::{Command, Invocation as Node, Plugin};
    nodes.iter().fold(Command::new(COMMAND_A), |command, node| {
        command.invocation(
            Node::new(node.clone())
                .plugin(Plugin::succeeding("aws:runShellScript", Duration::ZERO).stdout("ok\n")),
        )
    })
}

#[tokio::test]
async fn a_walk_keeps_the_final_answers_of_untracked_nodes_on_its_pages_for_their_resources() {
    let fleet = crate::tracking::plan::FLEET;
    // Listed first: five nodes no resource tracks yet, then the fleet's.
    let late: Vec<String> = (0..5).map(|i| format!("i-late{i}")).collect();
    let tracked: Vec<String> = (0..fleet).map(|i| format!("i-f{i:03}")).collect();
    let sim = ssm_sim::Simulator::start().await.expect("simulator");
    sim.add_command(ended_fleet(&[late.clone(), tracked].concat()));
    let tracker = tracker_at(&sim).await;
    track_fleet(&tracker, COMMAND_A, fleet);
    let key = command_key(COMMAND_A);
    walk_tracked(&tracker, &key).await;
    let pages = sim.calls("ListCommandInvocations");
    assert_eq!(pages, 2, "the pages the fleet needs, no more");
    assert_eq!(tracker.state().commands[&key].unclaimed.len(), 5);

    // The late nodes' resources come: answered from the walk, without a call.
    let answer = track_known(&tracker, "late3");
    assert_eq!(status_of(answer.clone()).as_deref(), Some("Success"));
    assert_eq!(
        answer
            .and_then(|a| a.result.clone().ok())
            .map(|i| i.standard_output_content),
        Some("ok\n".to_string())
    );
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert!(
        due.iter().all(|(_, kind)| *kind == RoundKind::Regular),
        "no read of its own: {due:?}"
    );
    assert_eq!(sim.total_calls(), pages);

    // Resources written and forgotten: their nodes are not tracked any more, but no resource
    // is to come for them, so the next walk keeps nothing of them (nor of late3's).
    tracker.forget("late3");
    tracker.forget("f000");
    walk_tracked(&tracker, &key).await;
    let mut kept: Vec<String> = tracker.state().commands[&key]
        .unclaimed
        .keys()
        .cloned()
        .collect();
    kept.sort();
    assert_eq!(kept, ["i-late0", "i-late1", "i-late2", "i-late4"]);
    // Nor does a (repeated) end event read one ahead.
    event(&tracker, COMMAND_A, "i-f000", "Success");
    assert!(tracker.state().commands[&key].hinted.is_empty());
}

#[test]
fn a_fleet_whose_resources_name_a_step_reads_nothing_ahead() {
    // Only a resource without a step name can take a whole invocation's answer: a fleet of
    // resources naming a step would pay for reads nobody takes.
    let (tracker, _) = tracker();
    tracker.push_reachable(true);
    let command = command_key(COMMAND_A);
    for i in 0..crate::tracking::plan::FLEET {
        let uid = format!("s{i:03}");
        let object = ObjectRef::new(&format!("ci-{uid}")).within("ops");
        let step = InvocationKey {
            plugin_name: Some("aws:runShellScript".into()),
            ..key(COMMAND_A, &format!("i-{uid}"))
        };
        tracker.track(&uid, object, &step, 1, Instant::now());
    }
    regular_round_with_news(&tracker, &command);
    event(&tracker, COMMAND_A, "i-late", "Success");
    let (due, _) = tracker.start_due(Instant::now() + HINT_COALESCE);
    assert!(due.is_empty(), "{due:?}");
}

#[tokio::test]
async fn the_round_loop_reads_a_heard_end_ahead_with_one_get_and_the_resource_takes_that_answer() {
    use ssm_sim::{Invocation as Node, Plugin};
    let fleet: Vec<String> = (0..crate::tracking::plan::FLEET)
        .map(|i| format!("i-f{i:03}"))
        .collect();
    let late = Node::new("i-late")
        .plugin(Plugin::succeeding("aws:runShellScript", Duration::ZERO).stdout("late\n"));
    let sim = ssm_sim::Simulator::start().await.expect("simulator");
    sim.add_command(ended_fleet(&fleet).invocation(late));
    let tracker = Arc::new(tracker_at(&sim).await);
    // A fleet under push whose regular round is a minute away.
    let key = quiet_fleet_under_push(&tracker);
    tokio::spawn(tracker.clone().run());

    // The end event of a node no resource tracks yet: the round loop reads it with one Get
    // and keeps the answer for the resource to come.
    event(&tracker, COMMAND_A, "i-late", "Success");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tracker.state().commands[&key]
        .unclaimed
        .contains_key("i-late")
    {
        assert!(
            Instant::now() < deadline,
            "the heard end was not read ahead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.calls("GetCommandInvocation"), 1);
    assert_eq!(sim.total_calls(), 1, "one Get, no walk");

    // Its resource comes: it has the whole final answer at once, without another call.
    let answer = track_known(&tracker, "late").and_then(|a| a.result.clone().ok());
    let answer = answer.expect("the answer read ahead");
    assert_eq!(answer.status, "Success");
    assert_eq!(answer.standard_output_content, "late\n");
    assert_eq!(sim.total_calls(), 1);
}
