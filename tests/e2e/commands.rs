//! The `Command` kind end to end: the real API server, the SSM simulator (which counts every
//! command SendCommand created, per marker) and the operator binary with `--send-commands`.
//! What a user sees: the Command's status, counts and conditions, its children, its Events,
//! and that SSM ran each generation exactly once, also when the operator dies mid-send.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use ssm_operator::api::{Command, CommandInvocation, CommandSpec, Target};
use ssm_sim::{Invocation, Plugin, SendFault, Simulator};
use testbed::TestCluster;

use crate::support::{observe_quietly, poll_until, ssm_status, Operator, OperatorOptions, World};

const DOCUMENT: &str = "AWS-RunShellScript";
const NODES: [&str; 3] = [
    "i-0aaaaaaaaaaaaaaa1",
    "i-0aaaaaaaaaaaaaaa2",
    "i-0aaaaaaaaaaaaaaa3",
];

fn spec(instance_ids: &[&str], comment: &str) -> CommandSpec {
    CommandSpec {
        document_name: DOCUMENT.into(),
        parameters: Some([("commands".to_string(), vec!["echo hi".to_string()])].into()),
        instance_ids: Some(instance_ids.iter().map(|s| s.to_string()).collect()),
        comment: Some(comment.into()),
        timeout_seconds: Some(600),
        ..CommandSpec::default()
    }
}

fn commands(world: &World) -> Api<Command> {
    world.api_of()
}

async fn create(world: &World, name: &str, spec: CommandSpec) -> Command {
    commands(world)
        .create(&PostParams::default(), &Command::new(name, spec))
        .await
        .unwrap_or_else(|e| panic!("create Command {name}: {e}"))
}

/// Waits until `done` holds for the Command, following a watch.
async fn wait_command(
    world: &World,
    name: &str,
    what: &str,
    done: impl Fn(&Command) -> bool,
) -> Command {
    world.wait_on(name, what, done).await
}

async fn wait_command_condition(world: &World, name: &str, type_: &str, value: &str) -> Command {
    wait_command(world, name, &format!("{type_}={value}"), |c| {
        c.condition(type_).is_some_and(|c| c.status == value)
    })
    .await
}

fn reason(command: &Command, type_: &str) -> String {
    command
        .condition(type_)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn marker(command: &Command) -> String {
    command
        .status
        .as_ref()
        .and_then(|s| s.send.as_ref())
        .map(|s| s.marker.clone())
        .expect("the send intent is recorded")
}

/// The Command's children, by name.
async fn children(world: &World, name: &str) -> Vec<CommandInvocation> {
    let mut list = world
        .api()
        .list(&ListParams::default().labels(&format!("ssm.operator.dev/command={name}")))
        .await
        .expect("list children")
        .items;
    list.sort_by_key(|c| c.name_any());
    list
}

/// Events on the Command, by reason, oldest first.
async fn command_events(world: &World, name: &str) -> Vec<String> {
    world.event_reasons(name).await
}

pub async fn send_children_and_success_with_counts(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-send").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(800)).stdout("patched\n")]);
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    create(&world, "patch", spec(&NODES, "nightly patch")).await;

    let done = wait_command_condition(&world, "patch", "Ready", "True").await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.status.as_deref(), Some("Success"), "{status:#?}");
    assert_eq!(
        (
            status.target_count,
            status.completed_count,
            status.error_count,
            status.delivery_timed_out_count
        ),
        (Some(3), Some(3), Some(0), Some(0))
    );
    assert_eq!(status.done.as_deref(), Some("3/3"));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(reason(&done, "Finished"), "Success");
    assert_eq!(
        done.condition("Stalled").map(|c| c.status.as_str()),
        Some("False")
    );

    // SSM got exactly one command, carrying the comment and the marker.
    let marker = marker(&done);
    let sent = sim.sent();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].comment, format!("nightly patch {marker}"));
    assert_eq!(sent[0].document_name, DOCUMENT);
    assert_eq!(sent[0].instance_ids, NODES.to_vec());
    assert_eq!(
        status.command_id.as_deref(),
        Some(sent[0].command_id.as_str())
    );
    assert_eq!(sim.calls("SendCommand"), 1);

    // One child per node, named, labelled and owned as the contract says, each tracked.
    let kids = children(&world, "patch").await;
    let names: Vec<String> = kids.iter().map(|c| c.name_any()).collect();
    assert_eq!(
        names,
        NODES
            .iter()
            .map(|n| format!("patch-{n}"))
            .collect::<Vec<_>>()
    );
    for kid in &kids {
        assert_eq!(kid.spec.command_id, sent[0].command_id);
        let owner = &kid.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Command", "patch")
        );
        assert_eq!(owner.controller, Some(true));
        let tracked = world.wait_status(&kid.name_any(), "Success").await;
        let s = tracked.status.expect("child status");
        assert_eq!(s.standard_output_content.as_deref(), Some("patched\n"));
    }

    // What kubectl shows.
    let table = world.kubectl(&["get", "ssmcmd"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "DONE", "ERRORS", "DOCUMENT", "AGE"]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        ["patch", "Success", "3/3", "0", DOCUMENT],
        "{table}"
    );
    let wide = world.kubectl(&["get", "ssmcmd", "-o", "wide"]).await;
    assert!(
        wide.contains("COMMAND-ID") && wide.contains(&sent[0].command_id),
        "{wide}"
    );
    let events = command_events(&world, "patch").await;
    for expected in ["Sending", "Sent", "Success"] {
        assert!(events.iter().any(|e| e == expected), "{events:?}");
    }
    operator.stop().await;
}

pub async fn partial_failure_stalls_with_the_counts(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-partial").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(500))]);
    sim.script_instance(
        Invocation::new(NODES[1]).plugin(
            Plugin::failing_at(
                "",
                Duration::from_millis(300),
                Duration::from_millis(900),
                3,
            )
            .stderr("disk full\n"),
        ),
    );
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    create(&world, "partial", spec(&NODES, "")).await;

    let stalled = wait_command_condition(&world, "partial", "Stalled", "True").await;
    let status = stalled.status.clone().expect("status");
    assert_eq!(status.status.as_deref(), Some("Failed"), "{status:#?}");
    assert_eq!(
        (
            status.target_count,
            status.completed_count,
            status.error_count
        ),
        (Some(3), Some(3), Some(1))
    );
    assert_eq!(
        stalled.condition("Finished").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        stalled.condition("Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    let failed = world
        .wait_status(&format!("partial-{}", NODES[1]), "Failed")
        .await;
    let s = failed.status.expect("child status");
    assert_eq!(s.response_code, Some(3));
    assert_eq!(s.standard_error_content.as_deref(), Some("disk full\n"));
    world
        .wait_status(&format!("partial-{}", NODES[0]), "Success")
        .await;
    assert!(command_events(&world, "partial")
        .await
        .contains(&"Failed".to_string()));
    operator.stop().await;
}

pub async fn targets_resolve_over_time(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-targets").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(500))]);
    sim.resolve_target(
        "tag:Role",
        "web",
        [
            (NODES[0], Duration::ZERO),
            (NODES[1], Duration::from_secs(2)),
            (NODES[2], Duration::from_secs(4)),
        ],
    );
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    let mut by_tag = spec(&[], "by tag");
    by_tag.instance_ids = None;
    by_tag.targets = Some(vec![Target {
        key: "tag:Role".into(),
        values: vec!["web".into()],
    }]);
    create(&world, "web", by_tag).await;

    // The first node's child comes before the last node is even known to SSM.
    let first = poll_until("the first child", || {
        let world = &world;
        async move {
            let kids = children(world, "web").await;
            (!kids.is_empty()).then_some(kids.len())
        }
    })
    .await;
    assert!(
        first < 3,
        "all three children at once: targets did not resolve over time"
    );
    let done = wait_command_condition(&world, "web", "Ready", "True").await;
    let status = done.status.expect("status");
    assert_eq!(
        (status.target_count, status.completed_count),
        (Some(3), Some(3))
    );
    let names: Vec<String> = children(&world, "web")
        .await
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(
        names,
        NODES.iter().map(|n| format!("web-{n}")).collect::<Vec<_>>()
    );
    let sent = sim.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].targets,
        vec![("tag:Role".to_string(), vec!["web".to_string()])]
    );
    operator.stop().await;
}

pub async fn operator_killed_after_ssm_accepted_sends_nothing_twice(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-crash").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(500))]);

    // 1. SSM creates the command, and the operator dies before it hears so.
    sim.inject_send(SendFault::AcceptThenHang {
        delay: Duration::from_secs(120),
    });
    create(&world, "crash", spec(&NODES[..2], "crash test")).await;
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    poll_until("SSM to accept the send", || {
        let sim = &sim;
        async move { (!sim.sent().is_empty()).then_some(()) }
    })
    .await;
    operator.kill();
    let between = commands(&world).get("crash").await.expect("get");
    let s = between.status.clone().expect("status");
    assert!(
        s.send.is_some(),
        "the intent was recorded before the send: {s:#?}"
    );
    assert!(s.command_id.is_none(), "the reply never arrived: {s:#?}");
    let crash_marker = marker(&between);

    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    let done = wait_command_condition(&world, "crash", "Ready", "True").await;
    assert_eq!(
        sim.sent_with(&crash_marker),
        1,
        "sent again after the restart"
    );
    assert_eq!(sim.calls("SendCommand"), 1);
    assert_eq!(
        done.status.and_then(|s| s.command_id),
        Some(sim.sent()[0].command_id.clone()),
        "the restarted operator adopted the command it found"
    );

    // 2. A lost reply (HTTP 500 after SSM created it), while ListCommands lags behind: the
    //    first searches miss, a later one finds it, and nothing is sent twice.
    sim.set_list_commands_lag(Duration::from_secs(3));
    sim.inject_send(SendFault::AcceptThenFail);
    create(&world, "lost-reply", spec(&NODES[..1], "")).await;
    let done = wait_command_condition(&world, "lost-reply", "Ready", "True").await;
    assert_eq!(sim.sent_with(&marker(&done)), 1);
    assert_eq!(sim.calls("SendCommand"), 2);
    assert!(
        sim.calls("ListCommands") >= 2,
        "the send was looked for in ListCommands"
    );
    operator.stop().await;
}

pub async fn refusals_stall_without_a_second_send(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-refused").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(300))]);
    let operator = Operator::sending(
        &world,
        &sim.endpoint(),
        &["--allowed-documents", "AWS-RunShellScript,Team-*"],
    );

    // Not allowed: nothing reaches SSM.
    let mut evil = spec(&NODES[..1], "");
    evil.document_name = "Evil-Document".into();
    create(&world, "not-allowed", evil).await;
    let stalled = wait_command_condition(&world, "not-allowed", "Stalled", "True").await;
    assert_eq!(reason(&stalled, "Stalled"), "DocumentNotAllowed");

    // SSM refuses: SendFailed with SSM's words, and no second attempt.
    sim.inject_send(SendFault::refuse(
        "InvalidParameters",
        "Parameter \"commands\" is required",
    ));
    create(&world, "bad-params", spec(&NODES[..1], "")).await;
    let failed = wait_command_condition(&world, "bad-params", "Stalled", "True").await;
    assert_eq!(reason(&failed, "Stalled"), "SendFailed");
    let message = failed.condition("Stalled").map(|c| c.message.clone());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("InvalidParameters") && m.contains("is required")),
        "{message:?}"
    );
    observe_quietly(Duration::from_secs(3)).await;
    assert_eq!(
        sim.calls("SendCommand"),
        1,
        "a refused send is never repeated"
    );
    assert!(sim.sent().is_empty());
    assert!(command_events(&world, "bad-params")
        .await
        .contains(&"SendFailed".to_string()));

    // Throttled before anything was created: retried, and created once.
    sim.inject_send(SendFault::Throttle);
    create(&world, "throttled", spec(&NODES[..1], "")).await;
    let done = wait_command_condition(&world, "throttled", "Ready", "True").await;
    assert_eq!(sim.sent_with(&marker(&done)), 1);
    assert_eq!(sim.calls("SendCommand"), 3);
    operator.stop().await;
}

pub async fn sending_is_off_by_default(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-off").await;
    let sim = Simulator::start().await.expect("simulator");
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            ..OperatorOptions::default()
        },
    );
    create(&world, "nope", spec(&NODES[..1], "")).await;
    let stalled = wait_command_condition(&world, "nope", "Stalled", "True").await;
    assert_eq!(reason(&stalled, "Stalled"), "SendingDisabled");
    assert!(
        stalled
            .condition("Stalled")
            .is_some_and(|c| c.message.contains("--send-commands")),
        "the message says how to turn it on"
    );
    assert!(
        stalled.finalizers().is_empty(),
        "no finalizer without a send"
    );
    assert_eq!(sim.calls("SendCommand"), 0);
    assert!(command_events(&world, "nope")
        .await
        .contains(&"SendingDisabled".to_string()));
    operator.stop().await;
}

pub async fn delete_while_running_cancels_the_run(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-delete").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(120))]);
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    create(&world, "long", spec(&NODES[..2], "")).await;
    let running = wait_command(&world, "long", "a command id", |c| {
        c.status.as_ref().is_some_and(|s| s.command_id.is_some())
    })
    .await;
    assert!(running
        .finalizers()
        .iter()
        .any(|f| f == "ssm.operator.dev/cancel"));
    let command_id = running.status.and_then(|s| s.command_id).expect("id");

    commands(&world)
        .delete("long", &DeleteParams::default())
        .await
        .expect("delete");
    world.wait_gone::<Command>("long").await;
    assert_eq!(
        sim.cancelled(),
        vec![command_id],
        "cancelled in SSM before it went"
    );
    // The children go through their owner references (Kubernetes' garbage collector, which
    // the test bed runs).
    for node in &NODES[..2] {
        world
            .wait_gone::<CommandInvocation>(&format!("long-{node}"))
            .await;
    }
    operator.stop().await;
}

pub async fn spec_change_runs_again_exactly_once(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "cmd-rerun").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(300))]);
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    create(&world, "rerun", spec(&NODES[..2], "first")).await;
    let first = wait_command_condition(&world, "rerun", "Ready", "True").await;
    let first_id = first.status.and_then(|s| s.command_id).expect("first id");

    let patch = json!({"spec": {"comment": "second", "instanceIds": [NODES[0]]}});
    commands(&world)
        .patch("rerun", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch spec");
    let second = wait_command(&world, "rerun", "generation 2 Ready", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == Some(2))
            && c.condition("Ready").is_some_and(|r| r.status == "True")
    })
    .await;
    let second_id = second
        .status
        .clone()
        .and_then(|s| s.command_id)
        .expect("id");
    assert_ne!(second_id, first_id);
    let sent = sim.sent();
    assert_eq!(sent.len(), 2, "one run per generation: {sent:#?}");
    assert!(sent[1].comment.starts_with("second op:"));
    // The old run's children went; the new run has one child, tracking the new command.
    let kids = poll_until("only the new run's child", || {
        let (world, second_id) = (&world, &second_id);
        async move {
            let kids = children(world, "rerun").await;
            (kids.len() == 1 && kids[0].spec.command_id == *second_id).then_some(kids)
        }
    })
    .await;
    assert_eq!(
        ssm_status(&world.wait_status(&kids[0].name_any(), "Success").await),
        Some("Success")
    );
    observe_quietly(Duration::from_secs(2)).await;
    assert_eq!(sim.sent().len(), 2, "nothing more was sent");
    operator.stop().await;
}
