//! Push (`--sqs-queue-url`): the operator long-polls an SQS queue that EventBridge-shaped SSM
//! events flow into and reads a node as soon as an event says it finished, while its regular
//! polling is slowed far below what these scenarios wait for (`--poll-interval-min 10s`), so only
//! the events can explain a prompt update.
//!
//! The queue is the simulator's ([`SqsSimulator`]), fed by the SSM simulator's own timelines,
//! with faults (lost, duplicated, reordered events; poison messages); and moto's SQS once, as an
//! independent check of the wire protocol.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use futures::future::join_all;
use kube::api::PostParams;
use serde_json::{json, Value};
use ssm_operator::api::{
    Command as SsmCommand, CommandInvocation, CommandInvocationSpec, CommandSpec,
};
use ssm_sim::{Command, Invocation, Plugin, Simulator, SqsSimulator, Status};
use testbed::TestCluster;

use crate::conformance::Moto;
use crate::support::{poll_until, ssm_status, Operator, OperatorOptions, World};

/// The regular polling of these scenarios: a status change found by polling shows up at least
/// this late after the first round.
const POLL_MIN: &str = "10s";
const POLL_MAX: &str = "30s";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One scripted command with one node, and its resource.
struct Case {
    name: String,
    command_id: String,
    instance_id: String,
    /// When the node turns terminal, since the command was added.
    done_at: Duration,
    /// Success, else Failed with exit code 2.
    succeeds: bool,
}

impl Case {
    fn new(tag: u32, n: usize, done_at: Duration, succeeds: bool) -> Case {
        Case {
            name: format!("push-{n}"),
            command_id: format!("{tag:08x}-0000-4000-8000-{n:012x}"),
            instance_id: format!("i-{:017x}", 0xa000 + n),
            done_at,
            succeeds,
        }
    }

    fn command(&self) -> Command {
        let plugin = if self.succeeds {
            Plugin::succeeding_at("aws:runShellScript", ms(1000), self.done_at)
        } else {
            Plugin::failing_at("aws:runShellScript", ms(1000), self.done_at, 2)
        };
        Command::new(&self.command_id)
            .invocation(Invocation::new(&self.instance_id).plugin(plugin.stdout("done\n")))
    }

    fn spec(&self) -> CommandInvocationSpec {
        CommandInvocationSpec {
            ttl_seconds_after_finished: None,
            command_id: self.command_id.clone(),
            instance_id: self.instance_id.clone(),
            plugin_name: None,
            region: None,
        }
    }

    fn status(&self) -> &'static str {
        if self.succeeds {
            "Success"
        } else {
            "Failed"
        }
    }
}

/// The SSM and SQS simulators, events flowing from one to the other, and the operator
/// consuming the queue with slow regular polling.
struct Push {
    world: World,
    ssm: Simulator,
    sqs: SqsSimulator,
    operator: Operator,
}

impl Push {
    async fn start(cluster: Arc<TestCluster>, scenario: &str, backstop: &str) -> Push {
        Push::start_with(cluster, scenario, backstop, &[]).await
    }

    /// [`Push::start`] with extra operator flags.
    async fn start_with(
        cluster: Arc<TestCluster>,
        scenario: &str,
        backstop: &str,
        extra: &[&str],
    ) -> Push {
        let world = World::new(cluster, scenario).await;
        let ssm = Simulator::start().await.expect("ssm simulator");
        let sqs = SqsSimulator::start().await.expect("sqs simulator");
        ssm.publish_events_to(&sqs);
        let operator = Operator::start_polling(
            &world,
            &OperatorOptions {
                ssm_endpoint: ssm.endpoint(),
                args: [
                    "--sqs-queue-url".to_string(),
                    sqs.queue_url(),
                    "--push-backstop".into(),
                    backstop.into(),
                ]
                .into_iter()
                .chain(extra.iter().map(|s| s.to_string()))
                .collect(),
                env: vec![("AWS_ENDPOINT_URL_SQS".into(), sqs.endpoint())],
            },
            POLL_MIN,
            POLL_MAX,
        );
        operator.http_get_containing("readyz", "").await;
        poll_until("the operator to long-poll the queue", || async {
            (sqs.calls("ReceiveMessage") > 0).then_some(())
        })
        .await;
        Push {
            world,
            ssm,
            sqs,
            operator,
        }
    }

    /// Adds the cases' commands (one start instant, returned) and creates their resources.
    async fn run(&self, cases: &[Case]) -> Instant {
        let start = self.ssm.add_commands(cases.iter().map(Case::command));
        for case in cases {
            self.world.create(&case.name, case.spec()).await;
        }
        start
    }

    /// Waits until every case is Finished; returns when each was seen so, with the object.
    async fn finished(&self, cases: &[Case]) -> Vec<(Instant, CommandInvocation)> {
        join_all(cases.iter().map(|case| async {
            let obj = self
                .world
                .wait_condition(&case.name, "Finished", "True")
                .await;
            (Instant::now(), obj)
        }))
        .await
    }

    fn ssm_calls(&self) -> String {
        format!(
            "GetCommandInvocation {}, ListCommandInvocations {}, all {}",
            self.ssm.calls("GetCommandInvocation"),
            self.ssm.calls("ListCommandInvocations"),
            self.ssm.total_calls()
        )
    }

    /// Waits until every message put on the queue is gone (received and deleted).
    async fn queue_drained(&self) {
        poll_until("the queue to be empty", || async {
            let empty = self.sqs.pending_events() == 0
                && self.sqs.visible() == 0
                && self.sqs.in_flight() == 0;
            empty.then_some(())
        })
        .await;
    }
}

/// Checks each case ended as scripted and returns its lag: seen Finished − scripted end.
fn lags(
    cases: &[Case],
    start: Instant,
    finished: &[(Instant, CommandInvocation)],
) -> Vec<Duration> {
    cases
        .iter()
        .zip(finished)
        .map(|(case, (seen, obj))| {
            assert_eq!(ssm_status(obj), Some(case.status()), "{}", case.name);
            let ready = if case.succeeds { "True" } else { "False" };
            assert_eq!(
                obj.condition("Ready").map(|c| c.status.as_str()),
                Some(ready),
                "{}",
                case.name
            );
            let done = start + case.done_at;
            assert!(
                *seen >= done,
                "{}: Finished seen before SSM finished it",
                case.name
            );
            *seen - done
        })
        .collect()
}

pub async fn status_arrives_within_a_second_with_polling_at_its_backstop(
    cluster: Arc<TestCluster>,
) {
    let push = Push::start(cluster, "push-prompt", "30s").await;
    let cases = [
        Case::new(0x1, 0, ms(3000), true),
        Case::new(0x1, 1, ms(4000), true),
        Case::new(0x1, 2, ms(5000), false),
    ];
    let start = push.run(&cases).await;
    let finished = push.finished(&cases).await;
    let lags = lags(&cases, start, &finished);
    eprintln!("push-prompt: SSM calls: {}", push.ssm_calls());
    for (case, lag) in cases.iter().zip(&lags) {
        eprintln!(
            "push-prompt: {} ended at {:?}, Finished seen {lag:?} later",
            case.name, case.done_at
        );
    }
    // Polling alone would take at least 10 s after the first round; a second at most, with
    // room for a loaded machine.
    for (case, lag) in cases.iter().zip(&lags) {
        assert!(
            *lag <= ms(2000),
            "{}: Finished {lag:?} after SSM finished it",
            case.name
        );
    }
    // A first round per command, then one read per finished node (a command-level event may
    // add one List walk each).
    let calls = push.ssm.total_calls();
    assert!(calls <= 4 * cases.len() as u64, "{}", push.ssm_calls());
    push.queue_drained().await;
    push.operator.stop().await;
}

/// A `Command`'s run is pushed too: with its own polling slowed to 10 s, node events create
/// its children and the run's end (node and command events) finishes it within a couple of
/// seconds.
pub async fn a_command_follows_its_events_not_its_poll(cluster: Arc<TestCluster>) {
    let push = Push::start_with(cluster, "push-command", "30s", &["--send-commands"]).await;
    let nodes = ["i-0ccccccccccccccc1", "i-0ccccccccccccccc2"];
    // Both nodes start at 1 s and end 3 s after the send.
    push.ssm.set_send_default([Plugin::succeeding_at(
        "aws:runShellScript",
        ms(1000),
        ms(3000),
    )]);
    let commands: kube::Api<SsmCommand> = push.world.api_of();
    let spec = CommandSpec {
        document_name: "AWS-RunShellScript".into(),
        instance_ids: Some(nodes.iter().map(|n| n.to_string()).collect()),
        ..CommandSpec::default()
    };
    let created = Instant::now();
    commands
        .create(&PostParams::default(), &SsmCommand::new("pushed", spec))
        .await
        .expect("create Command");
    let finished = push
        .world
        .wait_on::<SsmCommand>("pushed", "Finished", |c| {
            c.condition("Finished").is_some_and(|f| f.status == "True")
        })
        .await;
    let sent = push.ssm.sent();
    assert_eq!(sent.len(), 1, "one send");
    let status = finished.status.clone().expect("status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    // SSM's run ended 3 s after the send (made at once); the Command's own next poll comes
    // 10 s after it.
    let took = created.elapsed();
    eprintln!("push-command: Finished {took:?} after the create (nodes ended 3 s after the send)");
    assert!(
        took < Duration::from_secs(7),
        "Finished {took:?} after the create: the events did not wake the Command (its poll \
         comes 10 s after the send)"
    );
    for node in nodes {
        let child = push
            .world
            .wait_condition(&format!("pushed-{node}"), "Finished", "True")
            .await;
        assert_eq!(ssm_status(&child), Some("Success"));
    }
    push.operator.stop().await;
}

pub async fn lost_events_only_slow_things_down(cluster: Arc<TestCluster>) {
    const BACKSTOP: Duration = Duration::from_secs(5);
    let push = Push::start(cluster, "push-lossy", "5s").await;
    // An event before the test's: the queue counts as delivering from the first round on, so
    // rounds run at the backstop.
    push.ssm.add_command(
        Command::new("0000beef-0000-4000-8000-000000000000").invocation(
            Invocation::new("i-0000000000000beef")
                .plugin(Plugin::new("aws:runShellScript").step(Duration::ZERO, Status::Success)),
        ),
    );
    push.operator
        .metrics_containing("ssm_operator_push_messages_total{kind=\"hint\"}")
        .await;
    // Seed 15 loses both terminal events (node and command) of push-1, push-5 and push-13.
    push.sqs.set_seed(15);
    push.sqs.drop_ratio(0.2);
    push.sqs.duplicate_ratio(0.1);
    push.sqs.reorder(0.2, ms(1000));

    let cases: Vec<Case> = (0..20)
        .map(|n| Case::new(0x2, n, ms(2000 + 150 * n as u64), n % 4 != 3))
        .collect();
    let start = push.run(&cases).await;
    let finished = push.finished(&cases).await;
    let lags = lags(&cases, start, &finished);

    // Which cases only polling could bring: both their terminal events were dropped.
    let mut dropped_terminal: Vec<(String, Option<String>)> = Vec::new();
    for body in push.sqs.dropped_events() {
        let event: Value = serde_json::from_str(&body).expect("event json");
        let detail = &event["detail"];
        if matches!(detail["status"].as_str(), Some("Success" | "Failed")) {
            dropped_terminal.push((
                detail["command-id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                detail["instance-id"].as_str().map(str::to_string),
            ));
        }
    }
    let lost: BTreeSet<&str> = cases
        .iter()
        .filter(|case| {
            let node = dropped_terminal
                .iter()
                .any(|(c, i)| *c == case.command_id && i.is_some());
            let command = dropped_terminal
                .iter()
                .any(|(c, i)| *c == case.command_id && i.is_none());
            node && command
        })
        .map(|case| case.name.as_str())
        .collect();
    eprintln!(
        "push-lossy: events published {}, dropped {}, duplicated {}, reordered {}; SSM calls: {}",
        push.sqs.events_published(),
        push.sqs.events_dropped(),
        push.sqs.events_duplicated(),
        push.sqs.events_reordered(),
        push.ssm_calls()
    );
    for (case, lag) in cases.iter().zip(&lags) {
        let how = if lost.contains(case.name.as_str()) {
            "both terminal events lost"
        } else {
            "event delivered"
        };
        eprintln!(
            "push-lossy: {} ({}) ended at {:?}, Finished seen {lag:?} later ({how})",
            case.name,
            case.status(),
            case.done_at
        );
    }
    assert!(!lost.is_empty(), "the seed was chosen to lose some updates");
    for (case, lag) in cases.iter().zip(&lags) {
        // Lost: the next regular round, at most a backstop (+20 % jitter) after the previous
        // one. Delivered: at once, or up to the 1 s reordering delay late.
        let bound = if lost.contains(case.name.as_str()) {
            BACKSTOP.mul_f64(1.2) + ms(2500)
        } else {
            ms(1000) + ms(2500)
        };
        assert!(
            *lag <= bound,
            "{}: Finished {lag:?} after SSM finished it (bound {bound:?})",
            case.name
        );
    }
    push.queue_drained().await;
    push.operator.stop().await;
}

pub async fn a_poisoned_message_does_not_block_the_queue(cluster: Arc<TestCluster>) {
    let push = Push::start(cluster, "push-poison", "30s").await;
    let malformed = [
        "not json at all".to_string(),
        json!({"Service": "Amazon S3", "Event": "s3:TestEvent"}).to_string(),
        // An invocation event without its node.
        json!({
            "version": "0", "source": "aws.ssm",
            "detail-type": "EC2 Command Invocation Status-change Notification",
            "detail": {"command-id": "00000000-0000-4000-8000-000000000001", "status": "Success"},
        })
        .to_string(),
        "[1, 2, 3]".to_string(),
    ];
    let foreign = [
        json!({
            "version": "0", "source": "aws.ec2",
            "detail-type": "EC2 Instance State-change Notification",
            "detail": {"instance-id": "i-0123456789abcdef0", "state": "running"},
        })
        .to_string(),
        json!({
            "version": "0", "source": "aws.ssm",
            "detail-type": "EC2 Automation Execution Status-change Notification",
            "detail": {"ExecutionId": "333ba70b-2333-48db-b17e-a5e69c6f4d1c", "Status": "Success"},
        })
        .to_string(),
    ];
    for body in malformed.iter().chain(&foreign) {
        push.sqs.send_raw(body.clone());
    }
    let cases = [
        Case::new(0x3, 0, ms(2000), true),
        Case::new(0x3, 1, ms(3000), false),
        Case::new(0x3, 2, ms(4000), true),
    ];
    let start = push.run(&cases).await;
    let finished = push.finished(&cases).await;
    let lags = lags(&cases, start, &finished);
    for (case, lag) in cases.iter().zip(&lags) {
        eprintln!(
            "push-poison: {} ended at {:?}, Finished seen {lag:?} later",
            case.name, case.done_at
        );
        assert!(*lag <= ms(2000), "{}: {lag:?}", case.name);
    }
    push.queue_drained().await;
    assert_eq!(push.sqs.deleted(), push.sqs.sent(), "every message deleted");
    let metrics = push
        .operator
        .metrics_containing(&format!(
            "ssm_operator_push_messages_total{{kind=\"malformed\"}} {}",
            malformed.len()
        ))
        .await;
    assert!(
        metrics.contains(&format!(
            "ssm_operator_push_messages_total{{kind=\"foreign\"}} {}",
            foreign.len()
        )),
        "{metrics}"
    );
    eprintln!(
        "push-poison: queue sent {}, received {}, deleted {}; SSM calls: {}",
        push.sqs.sent(),
        push.sqs.received(),
        push.sqs.deleted(),
        push.ssm_calls()
    );
    push.operator.stop().await;
}

pub async fn moto_sqs_speaks_the_same_protocol(cluster: Arc<TestCluster>) {
    let moto_server = Moto::start();
    let moto = moto_server.endpoint.clone();
    let sdk = moto_server.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = poll_until("moto to create the queue", || async {
        sqs.create_queue()
            .queue_name("ssm-operator-events")
            .send()
            .await
            .ok()
            .and_then(|out| out.queue_url)
    })
    .await;

    let world = World::new(cluster, "push-moto").await;
    let ssm = Simulator::start().await.expect("ssm simulator");
    // Ends 3 s after it is added: the first round (at once) sees it running.
    let case = Case::new(0x4, 0, ms(3000), true);
    let operator = Operator::start_polling(
        &world,
        &OperatorOptions {
            ssm_endpoint: ssm.endpoint(),
            args: vec!["--sqs-queue-url".into(), queue_url.clone()],
            env: vec![("AWS_ENDPOINT_URL_SQS".into(), moto.clone())],
        },
        POLL_MIN,
        POLL_MAX,
    );
    operator.http_get_containing("readyz", "").await;
    let start = ssm.add_commands([case.command()]);
    world.create(&case.name, case.spec()).await;
    let first = world
        .wait_for(&case.name, "a first SSM answer", |o| {
            ssm_status(o).is_some()
        })
        .await;
    assert_ne!(
        ssm_status(&first),
        Some("Success"),
        "the first round came only after SSM had finished the command"
    );
    // SSM has finished it; the next regular round is ≥ 10 s after the first.
    tokio::time::sleep_until((start + case.done_at + ms(500)).into()).await;
    let before = world.api().get(&case.name).await.expect("get");
    assert_ne!(
        ssm_status(&before),
        Some("Success"),
        "a regular round came before the event"
    );
    let calls_before = ssm.total_calls();

    let event = json!({
        "version": "0",
        "id": "4780e1b8-f56b-4de5-95f2-95db273d1602",
        "detail-type": "EC2 Command Invocation Status-change Notification",
        "source": "aws.ssm",
        "account": "123456789012",
        "time": "2026-11-30T10:00:02Z",
        "region": "eu-west-1",
        "resources": [format!("arn:aws:ec2:eu-west-1:123456789012:instance/{}", case.instance_id)],
        "detail": {
            "command-id": case.command_id,
            "document-name": "AWS-RunShellScript",
            "instance-id": case.instance_id,
            "requested-date-time": "2026-11-30T10:00:00.000Z",
            "status": "Success",
        },
    });
    let sent_at = Instant::now();
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(event.to_string())
        .send()
        .await
        .expect("send to moto");
    let obj = world.wait_condition(&case.name, "Finished", "True").await;
    let lag = sent_at.elapsed();
    assert_eq!(ssm_status(&obj), Some("Success"));
    eprintln!(
        "push-moto: Finished {lag:?} after the event was sent to moto; SSM calls for it: {}",
        ssm.total_calls() - calls_before
    );
    assert!(lag <= ms(2000), "the event took {lag:?}");

    // Consumed and deleted: nothing left, visible or in flight.
    poll_until("moto's queue to be empty", || async {
        let out = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .ok()?;
        let attrs = out.attributes()?;
        let count = |name| {
            attrs
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        (count(QueueAttributeName::ApproximateNumberOfMessages) == 0
            && count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0)
            .then_some(())
    })
    .await;
    operator
        .metrics_containing("ssm_operator_push_messages_total{kind=\"hint\"} 1")
        .await;
    operator.stop().await;
}
