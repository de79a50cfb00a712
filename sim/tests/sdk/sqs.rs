//! The SQS simulator through the real `aws-sdk-sqs` client: the queue operations, long polls,
//! visibility, errors, and the EventBridge events the SSM simulator puts on the queue.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;
use serde_json::Value;
use ssm_sim::{Command, Invocation, Plugin, Simulator, SqsSimulator, Status};

use crate::common::{client as ssm_client, ms, raw_post, sqs_client};

#[tokio::test]
async fn the_queue_round_trips_messages_through_the_sdk() {
    let sqs = SqsSimulator::start().await.unwrap();
    let c = sqs_client(&sqs);
    let url = c
        .create_queue()
        .queue_name("ssm-operator-events")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    assert_eq!(url, sqs.queue_url());
    let got = c
        .get_queue_url()
        .queue_name("ssm-operator-events")
        .send()
        .await
        .unwrap();
    assert_eq!(got.queue_url(), Some(url.as_str()));

    let sent = c
        .send_message()
        .queue_url(&url)
        .message_body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        sent.md5_of_message_body(),
        Some("5d41402abc4b2a76b9719d911017c592")
    );
    let id = sent.message_id().unwrap().to_string();
    assert_eq!((sqs.sent(), sqs.visible(), sqs.in_flight()), (1, 1, 0));

    let out = c
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap();
    let messages = out.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (m.message_id(), m.body(), m.md5_of_body()),
        (
            Some(id.as_str()),
            Some("hello"),
            Some("5d41402abc4b2a76b9719d911017c592")
        )
    );
    let attributes = m.attributes().unwrap();
    assert_eq!(
        attributes
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .map(String::as_str),
        Some("1")
    );
    assert!(attributes.contains_key(&MessageSystemAttributeName::SentTimestamp));
    assert_eq!((sqs.visible(), sqs.in_flight(), sqs.received()), (0, 1, 1));

    // Invisible now: a short poll finds nothing.
    let again = c.receive_message().queue_url(&url).send().await.unwrap();
    assert!(again.messages().is_empty());

    let attrs = c
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    let attr = |name| attrs.get(&name).map(String::as_str);
    assert_eq!(
        attr(QueueAttributeName::ApproximateNumberOfMessages),
        Some("0")
    );
    assert_eq!(
        attr(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        Some("1")
    );
    assert_eq!(attr(QueueAttributeName::VisibilityTimeout), Some("30"));
    assert_eq!(
        attr(QueueAttributeName::QueueArn),
        Some(sqs.queue_arn().as_str())
    );

    let deleted = c
        .delete_message_batch()
        .queue_url(&url)
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("0")
                .receipt_handle(m.receipt_handle().unwrap())
                .build()
                .unwrap(),
        )
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("1")
                .receipt_handle("not-a-receipt")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.successful().len(), 1);
    assert_eq!(deleted.failed().len(), 1);
    assert_eq!(deleted.failed()[0].code(), "ReceiptHandleIsInvalid");
    assert!(deleted.failed()[0].sender_fault());
    assert_eq!((sqs.visible(), sqs.in_flight(), sqs.deleted()), (0, 0, 1));

    // DeleteMessage, one at a time.
    sqs.send_raw("second");
    let out = c.receive_message().queue_url(&url).send().await.unwrap();
    let receipt = out.messages()[0].receipt_handle().unwrap();
    c.delete_message()
        .queue_url(&url)
        .receipt_handle(receipt)
        .send()
        .await
        .unwrap();
    assert_eq!(sqs.deleted(), 2);
    assert_eq!(sqs.calls("ReceiveMessage"), 3);
    assert_eq!(sqs.calls("DeleteMessage"), 1);
    assert_eq!(sqs.calls("DeleteMessageBatch"), 1);
    assert_eq!(sqs.total_calls(), 9);
}

#[tokio::test]
async fn errors_look_like_sqs() {
    let sqs = SqsSimulator::start().await.unwrap();
    let c = sqs_client(&sqs);
    let url = sqs.queue_url();

    // Errors SQS's Query protocol named differently carry x-amzn-query-error, which the SDK
    // prefers for the code (as with real SQS).
    let err = c
        .receive_message()
        .queue_url(url.replace("ssm-operator-events", "other"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AWS.SimpleQueueService.NonExistentQueue"));
    let err = c
        .get_queue_url()
        .queue_name("other")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AWS.SimpleQueueService.NonExistentQueue"));
    let err = c
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(11)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    let err = c
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(21)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    let err = c
        .delete_message()
        .queue_url(&url)
        .receipt_handle("garbage")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ReceiptHandleIsInvalid"));
    let err = c
        .delete_message_batch()
        .queue_url(&url)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AWS.SimpleQueueService.EmptyBatchRequest"));

    // The wire form: HTTP 400, {"__type": "com.amazonaws.sqs#…", "message": …}.
    let (status, headers, body) = raw(
        &sqs,
        "AmazonSQS.ReceiveMessage",
        r#"{"QueueUrl":"http://x/123456789012/nope"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        headers.contains("x-amzn-query-error: AWS.SimpleQueueService.NonExistentQueue;Sender"),
        "{headers}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    assert_eq!(body["message"], "The specified queue does not exist.");
    let (status, _, body) = raw(&sqs, "AmazonSQS.ReceiveMessage", "{not json").await;
    assert_eq!(status, 400);
    assert!(body.contains("SerializationException"), "{body}");
    let (status, _, body) = raw(&sqs, "AmazonSQS.ChangeMessageVisibility", "{}").await;
    assert_eq!(status, 400);
    assert!(body.contains("UnknownOperationException"), "{body}");
    assert_eq!(sqs.calls("ChangeMessageVisibility"), 1);
}

/// One raw request: (status, headers, body).
async fn raw(sqs: &SqsSimulator, target: &str, body: &str) -> (u16, String, String) {
    let reply = raw_post(sqs.local_addr(), "application/x-amz-json-1.0", target, body).await;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_a_message_arrives() {
    let sqs = SqsSimulator::start().await.unwrap();
    let c = sqs_client(&sqs);
    let start = Instant::now();
    let poll = c
        .receive_message()
        .queue_url(sqs.queue_url())
        .wait_time_seconds(10)
        .max_number_of_messages(10)
        .send();
    let sender = sqs.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ms(300)).await;
        sender.send_raw("late");
    });
    let out = poll.await.unwrap();
    let took = start.elapsed();
    assert_eq!(out.messages().len(), 1);
    assert!(took >= ms(300) && took < ms(2000), "{took:?}");

    // Nothing comes: the poll lasts its wait, then answers empty.
    let start = Instant::now();
    let out = c
        .receive_message()
        .queue_url(sqs.queue_url())
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(out.messages().is_empty());
    assert!(start.elapsed() >= ms(990), "{:?}", start.elapsed());

    // Shutdown ends a long poll at once.
    let c2 = c.clone();
    let url = sqs.queue_url();
    let pending = tokio::spawn(async move {
        c2.receive_message()
            .queue_url(url)
            .wait_time_seconds(20)
            .send()
            .await
    });
    tokio::time::sleep(ms(200)).await;
    let start = Instant::now();
    sqs.shutdown().await;
    assert!(start.elapsed() < ms(1500), "{:?}", start.elapsed());
    let answered = tokio::time::timeout(Duration::from_secs(3), pending).await;
    assert!(answered.is_ok(), "the long poll still hangs");
}

#[tokio::test]
async fn a_received_message_comes_back_after_its_visibility_timeout() {
    let sqs = SqsSimulator::start().await.unwrap();
    let c = sqs_client(&sqs);
    let url = sqs.queue_url();
    sqs.send_raw("again");
    let first = c
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(1)
        .send()
        .await
        .unwrap();
    let old = first.messages()[0].receipt_handle().unwrap().to_string();
    assert_eq!((sqs.visible(), sqs.in_flight()), (0, 1));
    let start = Instant::now();
    // The long poll wakes when the message is visible again.
    let second = c
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(5)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(took >= ms(900) && took < ms(2500), "{took:?}");
    let m = &second.messages()[0];
    assert_eq!(m.body(), Some("again"));
    assert_eq!(
        m.attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .map(String::as_str),
        Some("2")
    );
    // The old receipt handle no longer deletes it (SQS: success, message kept).
    c.delete_message()
        .queue_url(&url)
        .receipt_handle(&old)
        .send()
        .await
        .unwrap();
    assert_eq!((sqs.in_flight(), sqs.deleted()), (1, 0));
    c.delete_message()
        .queue_url(&url)
        .receipt_handle(m.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!((sqs.in_flight(), sqs.visible(), sqs.deleted()), (0, 0, 1));

    // The queue's default, set through the handle.
    sqs.set_visibility_timeout(ms(300));
    sqs.send_raw("short");
    c.receive_message().queue_url(&url).send().await.unwrap();
    assert_eq!(sqs.in_flight(), 1);
    tokio::time::sleep(ms(400)).await;
    assert_eq!((sqs.in_flight(), sqs.visible()), (0, 1));
}

/// One receive of up to 10 messages, long-polling up to `wait_seconds`, whose messages are
/// then deleted in one batch: (arrival since `start`, event) for each.
async fn take(
    c: &Client,
    sqs: &SqsSimulator,
    wait_seconds: i32,
    start: Instant,
) -> Vec<(Duration, Value)> {
    let got = c
        .receive_message()
        .queue_url(sqs.queue_url())
        .wait_time_seconds(wait_seconds)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let arrived = start.elapsed();
    let mut out = Vec::new();
    let mut entries = Vec::new();
    for (n, m) in got.messages().iter().enumerate() {
        out.push((arrived, serde_json::from_str(m.body().unwrap()).unwrap()));
        entries.push(
            DeleteMessageBatchRequestEntry::builder()
                .id(n.to_string())
                .receipt_handle(m.receipt_handle().unwrap())
                .build()
                .unwrap(),
        );
    }
    if !entries.is_empty() {
        c.delete_message_batch()
            .queue_url(sqs.queue_url())
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    out
}

/// Every message until the queue has been empty with no events pending: (arrival since
/// `start`, event).
async fn drain(c: &Client, sqs: &SqsSimulator, start: Instant) -> Vec<(Duration, Value)> {
    let mut out = Vec::new();
    loop {
        let got = take(c, sqs, 1, start).await;
        if got.is_empty() && sqs.pending_events() == 0 && sqs.visible() == 0 {
            return out;
        }
        out.extend(got);
    }
}

fn what(event: &Value) -> (String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&event["detail-type"]),
        text(&event["detail"]["instance-id"]),
        text(&event["detail"]["status"]),
    )
}

#[tokio::test]
async fn events_follow_the_ssm_timelines_and_never_run_ahead_of_the_api() {
    const CMD: &str = "5a1d0c2e-3b4f-4a6b-9c8d-7e6f5a4b3c2d";
    let ssm = Simulator::start().await.unwrap();
    let sqs = SqsSimulator::start().await.unwrap();
    ssm.publish_events_to(&sqs);
    let c = sqs_client(&sqs);
    let api = ssm_client(&ssm);
    let start = ssm.add_commands([Command::new(CMD)
        .document("AWS-RunShellScript", "1")
        .invocation(
            Invocation::new("i-0aaaaaaaaaaaaaaa1").plugin(Plugin::succeeding_at(
                "aws:runShellScript",
                ms(200),
                ms(600),
            )),
        )
        .invocation(
            Invocation::new("i-0bbbbbbbbbbbbbbb2").plugin(
                Plugin::new("aws:runShellScript")
                    .step(ms(300), Status::InProgress)
                    .step_with(ms(900), Status::Failed, "Failed", 3),
            ),
        )]);

    // Each event: when it is received, GetCommandInvocation already says so.
    let mut seen = Vec::new();
    while seen.len() < 9 {
        let got = take(&c, &sqs, 5, start).await;
        assert!(!got.is_empty(), "events stopped after {seen:?}");
        for (arrived, event) in got {
            let (kind, instance, status) = what(&event);
            if !instance.is_empty() {
                let now = api
                    .get_command_invocation()
                    .command_id(CMD)
                    .instance_id(&instance)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(now.status().map(|s| s.as_str()), Some(status.as_str()));
            }
            assert_eq!(event["detail"]["command-id"], CMD);
            assert_eq!(event["detail"]["document-name"], "AWS-RunShellScript");
            if kind.contains("Invocation") {
                seen.push((arrived, instance, status));
            } else {
                assert_eq!(event["resources"].as_array().map(Vec::len), Some(2));
                seen.push((arrived, "command".to_string(), status));
            }
        }
    }
    let statuses: Vec<(&str, &str)> = seen
        .iter()
        .map(|(_, node, status)| (node.as_str(), status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("i-0aaaaaaaaaaaaaaa1", "Pending"),
            ("i-0bbbbbbbbbbbbbbb2", "Pending"),
            ("command", "Pending"),
            ("i-0aaaaaaaaaaaaaaa1", "InProgress"),
            ("command", "InProgress"),
            ("i-0bbbbbbbbbbbbbbb2", "InProgress"),
            ("i-0aaaaaaaaaaaaaaa1", "Success"),
            // The command's own terminal event follows the last node's.
            ("i-0bbbbbbbbbbbbbbb2", "Failed"),
            ("command", "Failed"),
        ]
    );
    assert!(drain(&c, &sqs, start).await.is_empty());
    // Arrival times follow the script (received late only by the poll's own latency).
    let at = |node: &str, status: &str| {
        seen.iter()
            .find(|(_, n, s)| n == node && s == status)
            .map(|(t, ..)| *t)
            .unwrap()
    };
    let success = at("i-0aaaaaaaaaaaaaaa1", "Success");
    let failed = at("i-0bbbbbbbbbbbbbbb2", "Failed");
    assert!(success >= ms(600) && success < ms(1100), "{success:?}");
    assert!(failed >= ms(900) && failed < ms(1400), "{failed:?}");
    assert_eq!(sqs.events_published(), 9);
    assert_eq!(sqs.sent(), 9);
    assert_eq!((sqs.visible(), sqs.in_flight()), (0, 0));
}

/// What arrives for 40 quick commands under faults: counts of (detail-type, node, status).
async fn faulted_run(seed: u64) -> (BTreeMap<(String, String, String), usize>, [u64; 5]) {
    let ssm = Simulator::start().await.unwrap();
    let sqs = SqsSimulator::start().await.unwrap();
    ssm.publish_events_to(&sqs);
    sqs.set_seed(seed);
    sqs.drop_ratio(0.2);
    sqs.duplicate_ratio(0.1);
    sqs.reorder(0.2, ms(300));
    let c = sqs_client(&sqs);
    let commands = (0..40).map(|n| {
        Command::new(format!("00000000-0000-4000-8000-{n:012}")).invocation(
            Invocation::new(format!("i-{n:017x}")).plugin(Plugin::succeeding_at(
                "aws:runShellScript",
                ms(20),
                ms(40),
            )),
        )
    });
    let start = ssm.add_commands(commands);
    let mut counts = BTreeMap::new();
    for (_, event) in drain(&c, &sqs, start).await {
        let (kind, instance, status) = what(&event);
        let command = event["detail"]["command-id"].as_str().unwrap().to_string();
        *counts
            .entry((kind, format!("{command}/{instance}"), status))
            .or_insert(0) += 1;
    }
    let stats = [
        sqs.events_published(),
        sqs.events_dropped(),
        sqs.events_duplicated(),
        sqs.events_reordered(),
        sqs.sent(),
    ];
    (counts, stats)
}

#[tokio::test]
async fn event_faults_are_deterministic_for_a_seed() {
    let (first, stats) = faulted_run(7).await;
    let [published, dropped, duplicated, reordered, sent] = stats;
    // 40 commands × (3 node events + 3 command events).
    assert_eq!(published, 240);
    assert_eq!(sent, published - dropped + duplicated);
    assert!((24..=72).contains(&dropped), "{stats:?}");
    assert!(duplicated > 0 && reordered > 0, "{stats:?}");
    assert_eq!(first.values().sum::<usize>() as u64, sent);
    assert!(first.values().any(|&n| n == 2), "a duplicate arrived twice");
    let (again, stats_again) = faulted_run(7).await;
    assert_eq!((&first, stats), (&again, stats_again));
    let (other, _) = faulted_run(8).await;
    assert_ne!(first, other);
}

#[tokio::test]
async fn a_replaced_command_sends_only_its_new_events_and_delays_apply() {
    const CMD: &str = "6b2e1d3f-4c5a-4b7c-8d9e-0f1a2b3c4d5e";
    let ssm = Simulator::start().await.unwrap();
    let sqs = SqsSimulator::start().await.unwrap();
    ssm.publish_events_to(&sqs);
    let c = sqs_client(&sqs);
    ssm.add_command(
        Command::new(CMD).invocation(Invocation::new("i-1").plugin(Plugin::succeeding_at(
            "p",
            ms(100),
            ms(200),
        ))),
    );
    // Its two Pending events (t = 0) go out at once; the rest is replaced.
    tokio::time::sleep(ms(50)).await;
    sqs.delay_events(ms(300));
    let start = ssm.add_commands([Command::new(CMD).invocation(
        Invocation::new("i-1").plugin(
            Plugin::new("p")
                .step(ms(100), Status::InProgress)
                .step(ms(200), Status::Failed),
        ),
    )]);
    let events = drain(&c, &sqs, start).await;
    let terminal: Vec<_> = events
        .iter()
        .filter(|(_, e)| e["detail"]["status"] == "Success" || e["detail"]["status"] == "Failed")
        .map(|(t, e)| (*t, what(e).2))
        .collect();
    // Only the replacement's Failed, for the node and the command; no Success.
    assert_eq!(terminal.len(), 2, "{terminal:?}");
    assert!(terminal.iter().all(|(_, s)| s == "Failed"), "{terminal:?}");
    // Delivered 300 ms after the status changed (200 ms).
    assert!(terminal.iter().all(|(t, _)| *t >= ms(500)), "{terminal:?}");
    assert_eq!(sqs.events_published(), 2 + 6);
}
