//! Scripted timelines as GetCommandInvocation and ListCommandInvocations show them.

use std::time::{Duration, Instant};

use aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationError;
use aws_sdk_ssm::types::CommandInvocationStatus;
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};

use crate::common::{assert_iso_instant, client, eventually, ms};

const CMD: &str = "0b5c3a4e-1d2f-4a6b-8c7d-9e0f1a2b3c4d";

#[tokio::test]
async fn status_progresses_along_the_timeline() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.add_command(
        Command::new(CMD).comment("progress").invocation(
            Invocation::new("i-1").plugin(
                Plugin::new("aws:runShellScript")
                    .step(ms(400), Status::InProgress)
                    .step(ms(1200), Status::Success)
                    .stdout("done\n"),
            ),
        ),
    );
    let get = || {
        ssm.get_command_invocation()
            .command_id(CMD)
            .instance_id("i-1")
            .send()
    };

    let first = get().await.unwrap();
    assert_eq!(first.status(), Some(&CommandInvocationStatus::Pending));
    assert_eq!(first.status_details(), Some("Pending"));
    assert_eq!(first.response_code(), -1);
    assert_eq!(first.execution_start_date_time(), Some(""));
    assert_eq!(first.execution_elapsed_time(), Some(""));
    assert_eq!(first.plugin_name(), Some("aws:runShellScript"));
    assert_eq!(first.comment(), Some("progress"));
    assert_eq!(first.document_name(), Some("AWS-RunShellScript"));
    assert_eq!(first.document_version(), Some("1"));

    let mut seen = vec![Status::Pending.as_str().to_string()];
    let deadline = Instant::now() + Duration::from_secs(5);
    let last = loop {
        let out = get().await.unwrap();
        let status = out.status().unwrap().as_str().to_string();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "InProgress" {
            assert_eq!(out.response_code(), -1);
            assert_eq!(out.status_details(), Some("In Progress"));
            assert_iso_instant(out.execution_start_date_time().unwrap());
            assert_eq!(out.execution_end_date_time(), Some(""));
            assert!(out.execution_elapsed_time().unwrap().starts_with("PT"));
            assert_eq!(out.standard_output_content(), Some(""));
        }
        if status == "Success" {
            break out;
        }
        assert!(Instant::now() < deadline, "no Success; saw {seen:?}");
        tokio::time::sleep(ms(20)).await;
    };
    assert_eq!(seen, ["Pending", "InProgress", "Success"]);
    assert_eq!(last.response_code(), 0);
    assert_eq!(last.status_details(), Some("Success"));
    assert_eq!(last.standard_output_content(), Some("done\n"));
    assert_iso_instant(last.execution_end_date_time().unwrap());
    assert_eq!(last.execution_elapsed_time(), Some("PT0.800S"));
    // No S3 bucket: no URLs; no CloudWatch.
    assert_eq!(last.standard_output_url(), Some(""));
    let cw = last.cloud_watch_output_config().unwrap();
    assert!(!cw.cloud_watch_output_enabled());
}

#[tokio::test]
async fn undelivered_and_scripted_details() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.add_command(
        Command::new(CMD)
            .invocation(Invocation::new("i-undeliverable").plugin(
                Plugin::new("aws:runShellScript").step_with(
                    Duration::ZERO,
                    Status::Failed,
                    "Undeliverable",
                    -1,
                ),
            ))
            .invocation(
                Invocation::new("i-timeout").plugin(
                    Plugin::new("aws:runShellScript")
                        .step(Duration::ZERO, Status::InProgress)
                        .step(Duration::ZERO, Status::TimedOut),
                ),
            ),
    );
    let out = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-undeliverable")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), Some(&CommandInvocationStatus::Failed));
    assert_eq!(out.status_details(), Some("Undeliverable"));
    assert_eq!(out.response_code(), -1);
    assert_eq!(out.execution_start_date_time(), Some(""));
    assert_eq!(out.execution_elapsed_time(), Some(""));

    let out = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-timeout")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), Some(&CommandInvocationStatus::TimedOut));
    assert_eq!(out.status_details(), Some("Execution Timed Out"));
    assert_eq!(out.response_code(), -1);
}

#[tokio::test]
async fn hidden_invocations_appear_later() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.add_command(Command::new(CMD).invocation(Invocation::new("i-1").hidden_for(ms(300))));
    let err = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, GetCommandInvocationError::InvocationDoesNotExist(_)),
        "{err:?}"
    );
    let listed = ssm
        .list_command_invocations()
        .command_id(CMD)
        .send()
        .await
        .unwrap();
    assert!(listed.command_invocations().is_empty());

    let out = eventually(
        "the invocation to appear",
        Duration::from_secs(3),
        || async {
            ssm.get_command_invocation()
                .command_id(CMD)
                .instance_id("i-1")
                .send()
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(out.instance_id(), Some("i-1"));
}

#[tokio::test]
async fn multi_plugin_documents() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.add_command(
        Command::new(CMD)
            .document("Custom-TwoSteps", "3")
            .invocation(
                Invocation::new("i-1")
                    .plugin(Plugin::succeeding("first", Duration::ZERO).stdout("one"))
                    .plugin(
                        Plugin::new("second")
                            .step(Duration::ZERO, Status::InProgress)
                            .step(Duration::from_secs(60), Status::Success),
                    ),
            ),
    );
    let err = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, GetCommandInvocationError::InvalidPluginName(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("step name"), "{err}");

    let first = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-1")
        .plugin_name("first")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(first.standard_output_content(), Some("one"));
    assert_eq!(first.document_version(), Some("3"));
    let second = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-1")
        .plugin_name("second")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), Some(&CommandInvocationStatus::InProgress));

    let listed = ssm
        .list_command_invocations()
        .command_id(CMD)
        .details(true)
        .send()
        .await
        .unwrap();
    let inv = &listed.command_invocations()[0];
    assert_eq!(inv.status(), Some(&CommandInvocationStatus::InProgress));
    let plugins = inv.command_plugins();
    assert_eq!(plugins.len(), 2);
    assert_eq!(plugins[0].name(), Some("first"));
    assert_eq!(plugins[0].response_code(), 0);
    assert!(plugins[0].response_finish_date_time().is_some());
    assert_eq!(plugins[0].output(), Some("one"));
    assert_eq!(plugins[1].name(), Some("second"));
    assert!(plugins[1].response_start_date_time().is_some());
    assert!(plugins[1].response_finish_date_time().is_none());
    assert_eq!(plugins[1].response_code(), -1);

    let err = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-1")
        .plugin_name("third")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, GetCommandInvocationError::InvalidPluginName(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn output_is_cut_to_ssm_limits() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    // Multi-byte characters: the limits count characters, not bytes.
    let stdout = "é".repeat(30_000);
    let stderr = "x".repeat(10_000);
    sim.add_command(
        Command::new(CMD).invocation(
            Invocation::new("i-1").plugin(
                Plugin::new("aws:runShellScript")
                    .step_with(Duration::ZERO, Status::Failed, "Failed", 2)
                    .stdout(stdout.clone())
                    .stderr(stderr.clone()),
            ),
        ),
    );
    let out = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.response_code(), 2);
    assert_eq!(
        out.standard_output_content().unwrap().chars().count(),
        24_000
    );
    assert_eq!(out.standard_error_content().unwrap().chars().count(), 8_000);
    let listed = ssm
        .list_command_invocations()
        .command_id(CMD)
        .details(true)
        .send()
        .await
        .unwrap();
    let output = listed.command_invocations()[0].command_plugins()[0]
        .output()
        .unwrap();
    assert_eq!(output.chars().count(), 2_500);
    assert!(stdout.starts_with(output));
}

#[tokio::test]
async fn s3_urls_and_cloudwatch() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.add_command(
        Command::new(CMD)
            .s3_output("my-bucket", "runs")
            .cloudwatch("/ssm/runs")
            .invocation(Invocation::new("i-1")),
    );
    let out = ssm
        .get_command_invocation()
        .command_id(CMD)
        .instance_id("i-1")
        .send()
        .await
        .unwrap();
    let base = format!(
        "https://s3.eu-west-1.amazonaws.com/my-bucket/runs/{CMD}/i-1/awsrunShellScript/0.awsrunShellScript"
    );
    assert_eq!(
        out.standard_output_url(),
        Some(format!("{base}/stdout").as_str())
    );
    assert_eq!(
        out.standard_error_url(),
        Some(format!("{base}/stderr").as_str())
    );
    let cw = out.cloud_watch_output_config().unwrap();
    assert_eq!(cw.cloud_watch_log_group_name(), Some("/ssm/runs"));
    assert!(cw.cloud_watch_output_enabled());

    let listed = ssm
        .list_command_invocations()
        .command_id(CMD)
        .details(true)
        .send()
        .await
        .unwrap();
    let inv = &listed.command_invocations()[0];
    assert!(inv.requested_date_time().is_some());
    let plugin = &inv.command_plugins()[0];
    assert_eq!(plugin.output_s3_bucket_name(), Some("my-bucket"));
    assert_eq!(plugin.output_s3_key_prefix(), Some("runs"));
    assert_eq!(
        plugin.standard_output_url(),
        Some(format!("{base}/stdout").as_str())
    );
}
