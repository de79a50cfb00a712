//! Tests of SendCommand's scripts and targets, the records of sends and cancels, and
//! ListCommands' filters, paging and lag, through [`crate::api::handle`] with a controlled
//! clock.

use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::api::handle;
use crate::clock::iso_instant;
use crate::error::ApiError;
use crate::model::Store;
use crate::script::{Command, Invocation, Plugin, Status};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A store and the origin of a simulated clock.
struct Sim {
    store: RwLock<Store>,
    start: Instant,
    wall: SystemTime,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            store: RwLock::new(Store::default()),
            start: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn store(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` at `at` milliseconds on the simulated clock.
    fn call(&self, at: u64, op: &str, body: Value) -> Result<Value, ApiError> {
        let body = body.to_string();
        handle(
            &self.store,
            op,
            body.as_bytes(),
            self.start + ms(at),
            self.wall + ms(at),
        )
        .map(|reply| serde_json::from_slice(&reply).unwrap())
    }

    fn send(&self, at: u64, body: Value) -> Value {
        self.call(at, "SendCommand", body).unwrap()["Command"].clone()
    }

    fn send_error(&self, body: Value) -> String {
        self.call(0, "SendCommand", body).unwrap_err().code
    }

    fn command(&self, at: u64, id: &str) -> Value {
        let listed = self
            .call(at, "ListCommands", json!({ "CommandId": id }))
            .unwrap();
        listed["Commands"][0].clone()
    }

    fn invocation(&self, at: u64, id: &str, instance: &str) -> Result<Value, ApiError> {
        self.call(
            at,
            "GetCommandInvocation",
            json!({ "CommandId": id, "InstanceId": instance }),
        )
    }

    fn instances(&self, at: u64, id: &str) -> Vec<(String, String)> {
        let listed = self
            .call(at, "ListCommandInvocations", json!({ "CommandId": id }))
            .unwrap();
        listed["CommandInvocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["InstanceId"].as_str().unwrap().to_string(),
                    i["Status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn id(command: &Value) -> String {
    command["CommandId"].as_str().unwrap().to_string()
}

fn web_targets() -> Value {
    json!([{ "Key": "tag:Role", "Values": ["web"] }])
}

#[test]
fn scripted_instances_play_their_script_and_others_the_default() {
    let sim = Sim::new();
    sim.store().sending.script_instance(
        Invocation::new("i-fail").plugin(Plugin::failing_at("", ms(500), ms(1000), 3).stderr("X")),
    );
    let sent = sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript", "InstanceIds": ["i-fail", "i-ok"]}),
    );
    let cmd = id(&sent);
    let failed = sim.invocation(2000, &cmd, "i-fail").unwrap();
    assert_eq!(failed["Status"], "Failed");
    assert_eq!(failed["ResponseCode"], 3);
    assert_eq!(failed["StandardErrorContent"], "X");
    assert_eq!(failed["PluginName"], "aws:runShellScript");
    assert_eq!(
        sim.invocation(2000, &cmd, "i-ok").unwrap()["Status"],
        "InProgress"
    );
    let ok = sim.invocation(3000, &cmd, "i-ok").unwrap();
    assert_eq!(ok["StandardOutputContent"], "hello from i-ok\n");
    let listed = sim.command(3000, &cmd);
    assert_eq!(
        (
            &listed["Status"],
            &listed["ErrorCount"],
            &listed["CompletedCount"]
        ),
        (&json!("Failed"), &json!(1), &json!(2))
    );

    // A new default for unscripted instances, named after the document's step.
    sim.store()
        .sending
        .set_default(vec![Plugin::succeeding("", ms(400)).stdout("fast\n")]);
    let sent = sim.send(
        0,
        json!({"DocumentName": "AWS-RunPowerShellScript", "InstanceIds": ["i-ok"]}),
    );
    let done = sim.invocation(400, &id(&sent), "i-ok").unwrap();
    assert_eq!(
        (
            &done["Status"],
            &done["PluginName"],
            &done["StandardOutputContent"]
        ),
        (
            &json!("Success"),
            &json!("aws:runPowerShellScript"),
            &json!("fast\n")
        )
    );
}

#[test]
fn targets_appear_over_time_and_the_target_count_grows() {
    let sim = Sim::new();
    sim.store().sending.resolve_target(
        "tag:Role".into(),
        "web".into(),
        vec![("i-1".into(), Duration::ZERO), ("i-2".into(), ms(1000))],
    );
    // i-2's times count from when it appears: InProgress at 2 s, Success at 3 s.
    sim.store()
        .sending
        .script_instance(Invocation::new("i-2").plugin(Plugin::succeeding("", ms(2000))));
    let sent = sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript", "Targets": web_targets()}),
    );
    let cmd = id(&sent);
    assert_eq!(sent["TargetCount"], 1);
    assert_eq!(sent["InstanceIds"], json!([]));
    assert_eq!(sent["Targets"], web_targets());
    assert_eq!(sent["Status"], "Pending");
    let err = sim.invocation(500, &cmd, "i-2").unwrap_err();
    assert_eq!(err.code, "InvocationDoesNotExist");
    assert_eq!(sim.instances(500, &cmd).len(), 1);

    let listed = sim.command(1500, &cmd);
    assert_eq!(
        (&listed["TargetCount"], &listed["Status"]),
        (&json!(2), &json!("InProgress"))
    );
    assert_eq!(
        sim.instances(2500, &cmd),
        [
            ("i-1".to_string(), "InProgress".to_string()),
            ("i-2".to_string(), "InProgress".to_string())
        ]
    );
    let done = sim.command(3000, &cmd);
    assert_eq!(
        (&done["Status"], &done["CompletedCount"]),
        (&json!("Success"), &json!(2))
    );
}

#[test]
fn a_command_waiting_for_targets_is_not_finished() {
    let sim = Sim::new();
    sim.store().sending.resolve_target(
        "tag:Role".into(),
        "web".into(),
        vec![("i-1".into(), Duration::ZERO), ("i-2".into(), ms(5000))],
    );
    sim.store()
        .sending
        .set_default(vec![Plugin::new("").step(Duration::ZERO, Status::Success)]);
    let cmd = id(&sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript", "Targets": web_targets()}),
    ));
    let waiting = sim.command(100, &cmd);
    assert_eq!(
        (
            &waiting["Status"],
            &waiting["TargetCount"],
            &waiting["CompletedCount"]
        ),
        (&json!("InProgress"), &json!(1), &json!(1))
    );
    assert_eq!(sim.command(5000, &cmd)["Status"], "Success");
}

#[test]
fn targets_selecting_nothing_succeed_with_no_target() {
    let sim = Sim::new();
    let sent = sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript",
               "Targets": [{"Key": "tag:Role", "Values": ["nobody"]}]}),
    );
    assert_eq!(
        (
            &sent["Status"],
            &sent["TargetCount"],
            &sent["CompletedCount"]
        ),
        (&json!("Success"), &json!(0), &json!(0))
    );
    assert!(sim.instances(100, &id(&sent)).is_empty());
}

#[test]
fn bad_sends_are_refused_and_create_nothing() {
    let sim = Sim::new();
    sim.store().sending.refuse_document("Custom-Missing".into());
    let doc = "AWS-RunShellScript";
    for body in [
        json!({"DocumentName": doc}),
        json!({"DocumentName": doc, "InstanceIds": [], "Targets": []}),
        json!({"DocumentName": doc, "InstanceIds": ["i-1"], "Targets": web_targets()}),
        json!({"DocumentName": doc, "Targets": [{"Key": "tag:Role"}]}),
        json!({"DocumentName": doc, "Targets": [{"Values": ["web"]}]}),
        json!({"DocumentName": doc, "Targets": vec![json!({"Key": "k", "Values": ["v"]}); 6]}),
        json!({"InstanceIds": ["i-1"]}),
    ] {
        assert_eq!(
            sim.send_error(body.clone()),
            "ValidationException",
            "{body}"
        );
    }
    assert_eq!(
        sim.send_error(json!({"DocumentName": doc, "InstanceIds": [" "]})),
        "InvalidInstanceId"
    );
    let refused = sim
        .call(
            0,
            "SendCommand",
            json!({"DocumentName": "Custom-Missing", "InstanceIds": ["i-1"]}),
        )
        .unwrap_err();
    assert_eq!(refused.code, "InvalidDocument");
    assert_eq!(
        refused.message,
        "Document with name Custom-Missing does not exist."
    );
    assert!(sim.store().sending.sent.is_empty());
    assert_eq!(sim.store().command_count(), 0);
}

#[test]
fn sends_and_cancels_are_recorded() {
    let sim = Sim::new();
    let sent = sim.send(
        250,
        json!({"DocumentName": "AWS-RunShellScript", "DocumentVersion": "$LATEST",
               "InstanceIds": ["i-1", "i-2", "i-1"], "Comment": "deploy op:00000000000000ab",
               "Parameters": {"commands": ["true"]}, "MaxConcurrency": "10%",
               "MaxErrors": "1", "TimeoutSeconds": 600,
               "OutputS3BucketName": "b", "OutputS3KeyPrefix": "p"}),
    );
    assert_eq!(
        (
            &sent["MaxConcurrency"],
            &sent["MaxErrors"],
            &sent["TimeoutSeconds"]
        ),
        (&json!("10%"), &json!("1"), &json!(600))
    );
    let by_targets = sim.send(
        300,
        json!({"DocumentName": "AWS-RunShellScript", "Targets": web_targets()}),
    );
    let cmd = id(&sent);
    sim.call(400, "CancelCommand", json!({"CommandId": cmd}))
        .unwrap();
    let unknown = sim.call(500, "CancelCommand", json!({"CommandId": "nope"}));
    assert_eq!(unknown.unwrap_err().code, "InvalidCommandId");

    let store = sim.store();
    let records = &store.sending.sent;
    assert_eq!(records.len(), 2);
    let first = &records[0];
    assert_eq!(first.command_id, cmd);
    assert_eq!(first.comment, "deploy op:00000000000000ab");
    assert_eq!(first.document_name, "AWS-RunShellScript");
    assert_eq!(first.document_version.as_deref(), Some("$LATEST"));
    assert_eq!(first.instance_ids, ["i-1", "i-2", "i-1"]);
    assert!(first.targets.is_empty());
    assert_eq!(first.parameters["commands"], ["true"]);
    assert_eq!(first.max_concurrency.as_deref(), Some("10%"));
    assert_eq!(first.timeout_seconds, Some(600));
    assert_eq!(first.output_s3_bucket_name.as_deref(), Some("b"));
    assert_eq!(first.at, sim.wall + ms(250));
    assert_eq!(records[1].command_id, id(&by_targets));
    assert_eq!(
        records[1].targets,
        [("tag:Role".to_string(), vec!["web".to_string()])]
    );
    assert_eq!(store.sending.cancelled, [cmd, "nope".to_string()]);
}

#[test]
fn cancelling_a_sent_command_ends_it_cancelled() {
    let sim = Sim::new();
    sim.store()
        .sending
        .script_instance(Invocation::new("i-bad").plugin(Plugin::failing_at(
            "",
            ms(100),
            ms(500),
            2,
        )));
    let cmd = id(&sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript", "InstanceIds": ["i-bad", "i-slow"]}),
    ));
    sim.call(800, "CancelCommand", json!({"CommandId": cmd}))
        .unwrap();
    assert_eq!(sim.command(900, &cmd)["Status"], "Cancelling");
    let done = sim.command(1800, &cmd);
    assert_eq!(
        (
            &done["Status"],
            &done["ErrorCount"],
            &done["CompletedCount"]
        ),
        (&json!("Cancelled"), &json!(1), &json!(2))
    );
    assert_eq!(
        sim.invocation(1800, &cmd, "i-slow").unwrap()["Status"],
        "Cancelled"
    );
    // Cancelling a finished command changes nothing.
    let quick = id(&sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript", "InstanceIds": ["i-bad"]}),
    ));
    sim.call(600, "CancelCommand", json!({"CommandId": quick}))
        .unwrap();
    assert_eq!(sim.command(2000, &quick)["Status"], "Failed");
}

#[test]
fn cancelling_a_target_command_withdraws_the_targets_yet_to_appear() {
    let sim = Sim::new();
    sim.store().sending.resolve_target(
        "tag:Role".into(),
        "web".into(),
        vec![("i-1".into(), Duration::ZERO), ("i-2".into(), ms(5000))],
    );
    let cmd = id(&sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript", "Targets": web_targets()}),
    ));
    sim.call(500, "CancelCommand", json!({"CommandId": cmd}))
        .unwrap();
    let done = sim.command(6000, &cmd);
    assert_eq!(
        (&done["Status"], &done["TargetCount"]),
        (&json!("Cancelled"), &json!(1))
    );
    assert_eq!(
        sim.instances(6000, &cmd),
        [("i-1".to_string(), "Cancelled".to_string())]
    );
    assert!(sim.invocation(6000, &cmd, "i-2").is_err());
}

fn listed_ids(reply: &Value) -> Vec<String> {
    reply["Commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect()
}

#[test]
fn list_commands_filters_by_time_document_and_status() {
    let sim = Sim::new();
    // Five commands, 10 s apart on the wall clock; the last on another document.
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let document = if i == 4 {
                "Custom-Doc"
            } else {
                "AWS-RunShellScript"
            };
            id(&sim.send(
                i * 10_000,
                json!({"DocumentName": document, "InstanceIds": ["i-1"]}),
            ))
        })
        .collect();
    let at = |offset: u64| iso_instant(sim.wall + ms(offset));
    let list = |filters: Value| {
        listed_ids(
            &sim.call(41_500, "ListCommands", json!({ "Filters": filters }))
                .unwrap(),
        )
    };
    let newest_first = |range: std::ops::Range<usize>| -> Vec<String> {
        ids[range].iter().rev().cloned().collect()
    };
    assert_eq!(
        list(json!([{"key": "InvokedAfter", "value": at(20_000)}])),
        newest_first(2..5)
    );
    assert_eq!(
        list(json!([{"key": "InvokedBefore", "value": at(20_000)}])),
        newest_first(0..2)
    );
    assert_eq!(
        list(json!([{"key": "InvokedAfter", "value": at(5_000)},
                    {"key": "InvokedBefore", "value": at(35_000)}])),
        newest_first(1..4)
    );
    // Whole seconds, as an operator computing "intent time - 5 min" may send them.
    let whole = sim
        .wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let floor = iso_instant(SystemTime::UNIX_EPOCH + Duration::from_secs(whole));
    assert_eq!(floor.len(), 24);
    let floor = format!("{}Z", &floor[..19]);
    assert_eq!(
        list(json!([{"key": "InvokedAfter", "value": floor}])),
        newest_first(0..5)
    );
    assert_eq!(
        list(json!([{"key": "DocumentName", "value": "Custom-Doc"}])),
        newest_first(4..5)
    );
    // At 41.5 s the first four finished (default: 3 s), the last is still running.
    assert_eq!(
        list(json!([{"key": "Status", "value": "Success"}])),
        newest_first(0..4)
    );
    assert_eq!(
        list(json!([{"key": "ExecutionStage", "value": "Executing"}])),
        newest_first(4..5)
    );
    let bad = sim.call(
        0,
        "ListCommands",
        json!({"Filters": [{"key": "Owner", "value": "me"}]}),
    );
    assert_eq!(bad.unwrap_err().code, "InvalidFilterKey");
}

#[test]
fn list_commands_pages_with_filters() {
    let sim = Sim::new();
    let ids: Vec<String> = (0..5)
        .map(|i| {
            id(&sim.send(
                i * 1000,
                json!({"DocumentName": "AWS-RunShellScript", "InstanceIds": ["i-1"]}),
            ))
        })
        .collect();
    let after = iso_instant(sim.wall + ms(1000));
    let mut token: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut body =
            json!({"MaxResults": 2, "Filters": [{"key": "InvokedAfter", "value": after}]});
        if let Some(token) = &token {
            body["NextToken"] = json!(token);
        }
        let reply = sim.call(9000, "ListCommands", body).unwrap();
        pages.push(listed_ids(&reply));
        match reply["NextToken"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = ids[1..].iter().rev().cloned().collect();
    assert_eq!(pages.concat(), expected);
    assert_eq!(pages[0].len(), 2);
    assert_eq!(
        listed_ids(
            &sim.call(9000, "ListCommands", json!({"CommandId": ids[2]}))
                .unwrap()
        ),
        [ids[2].clone()]
    );
}

#[test]
fn the_list_lag_hides_sent_commands_from_list_commands_only() {
    let sim = Sim::new();
    sim.store().add(
        Command::new("scripted").invocation(Invocation::new("i-1")),
        sim.start,
        sim.wall,
    );
    sim.store().sending.list_lag = ms(1000);
    let cmd = id(&sim.send(
        0,
        json!({"DocumentName": "AWS-RunShellScript", "InstanceIds": ["i-1"]}),
    ));
    let all = |at| listed_ids(&sim.call(at, "ListCommands", json!({})).unwrap());
    assert_eq!(all(500), ["scripted"]);
    let by_id = sim
        .call(500, "ListCommands", json!({"CommandId": cmd}))
        .unwrap();
    assert_eq!(by_id["Commands"], json!([]));
    let by_instance = sim
        .call(500, "ListCommands", json!({"InstanceId": "i-1"}))
        .unwrap();
    assert_eq!(listed_ids(&by_instance), ["scripted"]);
    assert_eq!(sim.instances(500, &cmd).len(), 1);
    assert!(sim.invocation(500, &cmd, "i-1").is_ok());
    assert_eq!(all(1000), [cmd.clone(), "scripted".to_string()]);
    // It applies at once, to commands already made too.
    sim.store().sending.list_lag = ms(5000);
    assert_eq!(all(1000), ["scripted"]);
}
