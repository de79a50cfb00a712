//! Documents with several steps, end to end: a `Command` sends a two-step document
//! (`AWS-RunRemoteScript`-like: `downloadContent`, then `runShellScript`) and its children,
//! which name no step, mirror each node's invocation as a whole (the contract's
//! "Multi-step documents"); a `CommandInvocation` that names a step still mirrors that step.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{ListParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use ssm_operator::api::{Command, CommandInvocation, CommandInvocationSpec, CommandSpec};
use ssm_sim::{Invocation, Plugin, Simulator};
use testbed::TestCluster;

use crate::support::{get_json, Operator, World};

const DOCUMENT: &str = "AWS-RunRemoteScript";
const NODES: [&str; 3] = [
    "i-0bbbbbbbbbbbbbbb1",
    "i-0bbbbbbbbbbbbbbb2",
    "i-0bbbbbbbbbbbbbbb3",
];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The first step every node runs.
fn download() -> Plugin {
    Plugin::succeeding_at("downloadContent", ms(200), ms(500)).stdout("downloaded script\n")
}

pub async fn a_two_step_document_is_mirrored_per_node_as_a_whole(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "multi-step").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([
        download(),
        Plugin::succeeding_at("runShellScript", ms(600), ms(1200)).stdout("ran\n"),
    ]);
    // The last node fails in the second step.
    sim.script_instance(
        Invocation::new(NODES[2]).plugin(download()).plugin(
            Plugin::failing_at("runShellScript", ms(600), ms(1200), 2)
                .stdout("half done\n")
                .stderr("boom\n"),
        ),
    );
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    let spec = CommandSpec {
        document_name: DOCUMENT.into(),
        parameters: Some([("commandLine".to_string(), vec!["./deploy.sh".to_string()])].into()),
        instance_ids: Some(NODES.iter().map(|s| s.to_string()).collect()),
        ..CommandSpec::default()
    };
    world
        .api_of::<Command>()
        .create(&PostParams::default(), &Command::new("remote", spec))
        .await
        .expect("create Command");

    let command: Command = world
        .wait_on("remote", "Finished=True", |c: &Command| {
            c.condition("Finished").is_some_and(|c| c.status == "True")
        })
        .await;
    let status = command.status.clone().expect("Command status");
    assert_eq!(status.status.as_deref(), Some("Failed"), "{status:#?}");
    assert_eq!(
        (
            status.target_count,
            status.completed_count,
            status.error_count
        ),
        (Some(3), Some(3), Some(1)),
        "{status:#?}"
    );
    let command_id = status.command_id.clone().expect("command id");

    // Every child ends with its invocation's status, never stalled on a step name.
    let mut outcomes = Vec::new();
    for node in NODES {
        let name = format!("remote-{node}");
        let child = world.wait_condition(&name, "Finished", "True").await;
        let s = child.status.clone().expect("child status");
        let finished = child.condition("Finished").expect("Finished");
        assert_ne!(finished.reason, "InvalidPluginName", "{name}: {s:#?}");
        assert_eq!(child.spec.plugin_name, None, "children name no step");
        let json = get_json(&world, &name).await;
        let steps = json["status"]["steps"].clone();
        if node == NODES[2] {
            assert_eq!(s.status.as_deref(), Some("Failed"), "{name}: {s:#?}");
            assert_eq!(s.plugin_name.as_deref(), Some("runShellScript"), "{s:#?}");
            assert_eq!(s.response_code, Some(2), "{s:#?}");
            assert_eq!(s.standard_error_content.as_deref(), Some("boom\n"));
            assert_eq!(s.standard_output_content.as_deref(), Some("half done\n"));
            assert_eq!(
                steps,
                json!([
                    {"name": "downloadContent", "status": "Success", "responseCode": 0},
                    {"name": "runShellScript", "status": "Failed", "responseCode": 2},
                ]),
                "{name}"
            );
        } else {
            assert_eq!(s.status.as_deref(), Some("Success"), "{name}: {s:#?}");
            assert_eq!(s.plugin_name.as_deref(), Some("runShellScript"), "{s:#?}");
            assert_eq!(s.response_code, Some(0));
            assert_eq!(s.standard_output_content.as_deref(), Some("ran\n"));
            assert_eq!(
                steps,
                json!([
                    {"name": "downloadContent", "status": "Success", "responseCode": 0},
                    {"name": "runShellScript", "status": "Success", "responseCode": 0},
                ]),
                "{name}"
            );
        }
        assert!(s.execution_end_date_time.is_some(), "{s:#?}");
        let reasons = world.event_reasons(&name).await;
        assert!(
            !reasons.iter().any(|r| r == "InvalidPluginName"),
            "{name}: {reasons:?}"
        );
        outcomes.push(s.status.clone().unwrap_or_default());
    }
    // The Command's counts agree with its children.
    let children = world
        .api()
        .list(&ListParams::default().labels("ssm.operator.dev/command=remote"))
        .await
        .expect("list children")
        .items;
    assert_eq!(children.len(), 3);
    let failed = outcomes.iter().filter(|s| *s == "Failed").count();
    assert_eq!((failed, outcomes.len() - failed), (1, 2), "{outcomes:?}");
    assert_eq!(status.error_count, Some(failed as i32));

    // A resource naming a step still mirrors just that step, on a node whose invocation failed.
    let named = CommandInvocation::new(
        "download-on-failed-node",
        CommandInvocationSpec {
            command_id: command_id.clone(),
            instance_id: NODES[2].into(),
            plugin_name: Some("downloadContent".into()),
            region: None,
            ttl_seconds_after_finished: None,
        },
    );
    world
        .api()
        .create(&PostParams::default(), &named)
        .await
        .expect("create named step");
    let step = world
        .wait_condition("download-on-failed-node", "Ready", "True")
        .await;
    let s = step.status.clone().expect("status");
    assert_eq!(s.status.as_deref(), Some("Success"), "{s:#?}");
    assert_eq!(s.plugin_name.as_deref(), Some("downloadContent"));
    assert_eq!(s.response_code, Some(0));
    assert_eq!(
        s.standard_output_content.as_deref(),
        Some("downloaded script\n")
    );
    let json = get_json(&world, &step.name_any()).await;
    assert!(json["status"].get("steps").is_none(), "{json:#}");
    operator.stop().await;
}
