//! SendCommand's default timeline and CancelCommand.

use std::time::Duration;

use aws_sdk_ssm::types::{CloudWatchOutputConfig, CommandInvocationStatus, CommandStatus};
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};

use crate::common::{client, eventually};

#[tokio::test]
async fn send_command_then_get_command_invocation() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let sent = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids("i-aaaaaaaaaaaaaaaaa")
        .instance_ids("i-bbbbbbbbbbbbbbbbb")
        .parameters("commands", vec!["echo hello".to_string()])
        .comment("sent by a test")
        .output_s3_bucket_name("out-bucket")
        .output_s3_key_prefix("pre")
        .cloud_watch_output_config(
            CloudWatchOutputConfig::builder()
                .cloud_watch_output_enabled(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let command = sent.command().unwrap();
    let id = command.command_id().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(id.matches('-').count(), 4);
    assert_eq!(command.status(), Some(&CommandStatus::Pending));
    assert_eq!(command.target_count(), 2);
    assert_eq!(command.comment(), Some("sent by a test"));
    assert_eq!(
        command
            .parameters()
            .and_then(|p| p.get("commands"))
            .map(Vec::as_slice),
        Some(["echo hello".to_string()].as_slice())
    );

    let get = |instance: &'static str| {
        ssm.get_command_invocation()
            .command_id(&id)
            .instance_id(instance)
            .send()
    };
    let first = get("i-aaaaaaaaaaaaaaaaa").await.unwrap();
    assert_eq!(first.status(), Some(&CommandInvocationStatus::Pending));
    assert_eq!(first.comment(), Some("sent by a test"));
    assert_eq!(
        first.standard_output_url(),
        Some(
            format!(
                "https://s3.eu-west-1.amazonaws.com/out-bucket/pre/{id}/i-aaaaaaaaaaaaaaaaa/awsrunShellScript/0.awsrunShellScript/stdout"
            )
            .as_str()
        )
    );
    let cw = first.cloud_watch_output_config().unwrap();
    assert_eq!(
        cw.cloud_watch_log_group_name(),
        Some("/aws/ssm/AWS-RunShellScript")
    );

    let done = eventually("Success", Duration::from_secs(8), || async {
        get("i-bbbbbbbbbbbbbbbbb")
            .await
            .ok()
            .filter(|o| o.status() == Some(&CommandInvocationStatus::Success))
    })
    .await;
    assert_eq!(done.response_code(), 0);
    assert_eq!(
        done.standard_output_content(),
        Some("hello from i-bbbbbbbbbbbbbbbbb\n")
    );
    assert_eq!(done.plugin_name(), Some("aws:runShellScript"));

    let listed = eventually("the command to finish", Duration::from_secs(3), || async {
        let out = ssm.list_commands().command_id(&id).send().await.unwrap();
        let command = out.commands()[0].clone();
        (command.status() == Some(&CommandStatus::Success)).then_some(command)
    })
    .await;
    assert_eq!(listed.completed_count(), 2);
    assert_eq!(listed.error_count(), 0);
    assert_eq!(sim.calls("SendCommand"), 1);
}

#[tokio::test]
async fn cancel_command_goes_cancelling_then_cancelled() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let cmd = "9c8b7a6f-5e4d-4c3b-a2a1-0f9e8d7c6b5a";
    let long = || Plugin::succeeding("aws:runShellScript", Duration::from_secs(120));
    sim.add_command(
        Command::new(cmd)
            .invocation(Invocation::new("i-running").plugin(long()))
            .invocation(Invocation::new("i-also").plugin(long()))
            .invocation(
                Invocation::new("i-done").plugin(
                    Plugin::new("aws:runShellScript").step(Duration::ZERO, Status::Success),
                ),
            ),
    );
    ssm.cancel_command().command_id(cmd).send().await.unwrap();

    let get = |instance: &'static str| {
        ssm.get_command_invocation()
            .command_id(cmd)
            .instance_id(instance)
            .send()
    };
    let now = get("i-running").await.unwrap();
    assert_eq!(now.status(), Some(&CommandInvocationStatus::Cancelling));
    assert_eq!(now.status_details(), Some("Cancelling"));
    let done = get("i-done").await.unwrap();
    assert_eq!(done.status(), Some(&CommandInvocationStatus::Success));

    let cancelled = eventually("Cancelled", Duration::from_secs(4), || async {
        get("i-running")
            .await
            .ok()
            .filter(|o| o.status() == Some(&CommandInvocationStatus::Cancelled))
    })
    .await;
    assert_eq!(cancelled.status_details(), Some("Cancelled"));
    assert_eq!(cancelled.response_code(), -1);
    assert_eq!(cancelled.execution_start_date_time(), Some(""));
    let also = get("i-also").await.unwrap();
    assert_eq!(also.status(), Some(&CommandInvocationStatus::Cancelled));

    let listed = ssm.list_commands().command_id(cmd).send().await.unwrap();
    assert_eq!(
        listed.commands()[0].status(),
        Some(&CommandStatus::Cancelled)
    );
    assert_eq!(listed.commands()[0].completed_count(), 3);
}
