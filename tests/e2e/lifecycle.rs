//! The life of a CommandInvocation for every SSM outcome, as users see it: status fields,
//! conditions and Events, with the operator running as a separate process.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use ssm_operator::k8s::output::CUT_MARKER;
use ssm_sim::{Command, Fault, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;

use crate::support::{
    get_json, observe_quietly, spec, Operator, OperatorOptions, World, COMMAND_ID, INSTANCE_ID,
};

const PLUGIN: &str = "aws:runShellScript";
const OTHER_COMMAND_ID: &str = "0b7c8d9e-1f2a-4b3c-8d4e-5f6a7b8c9d0e";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn one_invocation(command_id: &str, plugin: Plugin) -> Command {
    Command::new(command_id).invocation(Invocation::new(INSTANCE_ID).plugin(plugin))
}

async fn setup(
    cluster: Arc<TestCluster>,
    scenario: &str,
    args: &[&str],
) -> (World, Simulator, Operator) {
    let world = World::new(cluster, scenario).await;
    let sim = Simulator::start().await.expect("simulator");
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..OperatorOptions::default()
        },
    );
    (world, sim, operator)
}

fn conditions_row(obj: &ssm_operator::api::CommandInvocation) -> [String; 4] {
    ["Ready", "Reconciling", "Stalled", "Finished"].map(|t| {
        obj.condition(t)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    })
}

pub async fn success_with_outputs_urls_and_cloudwatch(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "success", &[]).await;
    sim.add_command(
        Command::new(COMMAND_ID)
            .comment("patch web tier")
            .s3_output("ops-run-output", "patch")
            .cloudwatch("/ssm/patch")
            .invocation(
                Invocation::new(INSTANCE_ID).plugin(
                    Plugin::succeeding(PLUGIN, ms(1500))
                        .stdout("patched 3 packages\n")
                        .stderr("warning: reboot required\n"),
                ),
            ),
    );
    world.create("patch-web-1", spec(None)).await;
    let obj = world.wait_condition("patch-web-1", "Ready", "True").await;

    assert_eq!(conditions_row(&obj), ["True", "False", "False", "True"]);
    let s = obj.status.clone().expect("status");
    assert_eq!(s.status.as_deref(), Some("Success"));
    assert_eq!(s.status_details.as_deref(), Some("Success"));
    assert_eq!(s.response_code, Some(0));
    assert_eq!(s.comment.as_deref(), Some("patch web tier"));
    assert_eq!(s.document_name.as_deref(), Some("AWS-RunShellScript"));
    assert_eq!(s.plugin_name.as_deref(), Some(PLUGIN));
    assert_eq!(
        s.standard_output_content.as_deref(),
        Some("patched 3 packages\n")
    );
    assert_eq!(
        s.standard_error_content.as_deref(),
        Some("warning: reboot required\n")
    );
    let out_url = s.standard_output_url.expect("stdout URL");
    assert!(
        out_url.contains("ops-run-output") && out_url.contains(COMMAND_ID),
        "{out_url}"
    );
    assert!(s
        .standard_error_url
        .expect("stderr URL")
        .ends_with("stderr"));
    let cw = s.cloud_watch_output_config.expect("CloudWatch config");
    assert_eq!(cw.cloud_watch_log_group_name.as_deref(), Some("/ssm/patch"));
    assert_eq!(cw.cloud_watch_output_enabled, Some(true));
    assert!(s.execution_start_date_time.is_some() && s.execution_end_date_time.is_some());
    assert!(s.execution_elapsed_time.is_some());
    assert_eq!(s.observed_generation, Some(1));
    assert!(s.last_polled_time.is_some());

    let reasons = world.event_reasons("patch-web-1").await;
    assert_eq!(
        reasons.last().map(String::as_str),
        Some("Success"),
        "{reasons:?}"
    );
    operator.stop().await;
}

pub async fn failed_with_exit_code_and_stderr(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "failed", &[]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::new(PLUGIN)
            .step(ms(200), Status::InProgress)
            .step_with(ms(800), Status::Failed, "Failed", 42)
            .stderr("yum: package not found\n"),
    ));
    // spec.region takes the per-region client path (the simulator serves every region).
    let mut in_region = spec(None);
    in_region.region = Some("eu-central-1".into());
    world.create("fails", in_region).await;
    let obj = world.wait_condition("fails", "Finished", "True").await;
    assert_eq!(conditions_row(&obj), ["False", "False", "True", "True"]);
    let s = obj.status.clone().expect("status");
    assert_eq!(s.status.as_deref(), Some("Failed"));
    assert_eq!(s.response_code, Some(42));
    assert_eq!(
        s.standard_error_content.as_deref(),
        Some("yum: package not found\n")
    );
    let stalled = obj.condition("Stalled").expect("Stalled");
    assert_eq!(stalled.reason, "Failed");
    assert!(
        stalled.message.contains("exit code 42"),
        "{}",
        stalled.message
    );
    assert!(world
        .event_reasons("fails")
        .await
        .contains(&"Failed".to_string()));
    operator.stop().await;
}

pub async fn timed_out_execution(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "timedout", &[]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::new(PLUGIN)
            .step(ms(200), Status::InProgress)
            .step(ms(900), Status::TimedOut),
    ));
    world.create("slow", spec(None)).await;
    let obj = world.wait_condition("slow", "Finished", "True").await;
    let s = obj.status.clone().expect("status");
    assert_eq!(s.status.as_deref(), Some("TimedOut"));
    assert_eq!(s.status_details.as_deref(), Some("Execution Timed Out"));
    assert_eq!(conditions_row(&obj), ["False", "False", "True", "True"]);
    assert_eq!(obj.condition("Ready").expect("Ready").reason, "TimedOut");
    operator.stop().await;
}

pub async fn cancelled_via_cancelling(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "cancelled", &[]).await;
    world.create("cancel-me", spec(None)).await;
    // The invocation appears after the resource exists, so the whole timeline is observed.
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::new(PLUGIN)
            .step(ms(300), Status::InProgress)
            .step(ms(1000), Status::Cancelling)
            .step(ms(3500), Status::Cancelled),
    ));
    let during = world.wait_status("cancel-me", "Cancelling").await;
    assert_eq!(
        conditions_row(&during),
        ["False", "True", "False", "False"],
        "Cancelling is not terminal"
    );
    let obj = world.wait_condition("cancel-me", "Finished", "True").await;
    assert_eq!(
        obj.status.as_ref().and_then(|s| s.status.as_deref()),
        Some("Cancelled")
    );
    assert_eq!(conditions_row(&obj), ["False", "False", "True", "True"]);
    let reasons = world.event_reasons("cancel-me").await;
    let at = |r: &str| reasons.iter().position(|x| x == r);
    assert!(
        at("Cancelling") < at("Cancelled") && at("Cancelling").is_some(),
        "{reasons:?}"
    );
    operator.stop().await;
}

pub async fn delayed_then_success(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "delayed", &[]).await;
    world.create("flaky-node", spec(None)).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::new(PLUGIN)
            .step(ms(200), Status::Delayed)
            .step(ms(2700), Status::InProgress)
            .step(ms(3200), Status::Success),
    ));
    let during = world.wait_status("flaky-node", "Delayed").await;
    assert_eq!(conditions_row(&during), ["False", "True", "False", "False"]);
    let obj = world.wait_condition("flaky-node", "Ready", "True").await;
    assert_eq!(obj.status.and_then(|s| s.response_code), Some(0));
    assert!(world
        .event_reasons("flaky-node")
        .await
        .contains(&"Delayed".to_string()));
    operator.stop().await;
}

pub async fn invocation_not_found_then_appears(cluster: Arc<TestCluster>) {
    let (world, sim, operator) =
        setup(cluster, "notfound-appears", &["--not-found-grace", "60s"]).await;
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID)
                .hidden_for(ms(2000))
                .plugin(Plugin::succeeding(PLUGIN, ms(2600))),
        ),
    );
    world.create("eventually", spec(None)).await;
    let early = world
        .wait_for(
            "eventually",
            "Reconciling=True with InvocationNotFound",
            |o| {
                o.condition("Reconciling")
                    .is_some_and(|c| c.status == "True" && c.reason == "InvocationNotFound")
            },
        )
        .await;
    assert_eq!(
        conditions_row(&early),
        ["False", "True", "False", "False"],
        "not Stalled within grace"
    );
    world.wait_condition("eventually", "Ready", "True").await;
    let reasons = world.event_reasons("eventually").await;
    assert!(
        !reasons.contains(&"InvocationNotFound".to_string()),
        "no warning within grace: {reasons:?}"
    );
    operator.stop().await;
}

pub async fn invocation_never_found_stalls_and_is_rechecked_rarely(cluster: Arc<TestCluster>) {
    let (world, sim, operator) =
        setup(cluster, "notfound-stalls", &["--not-found-grace", "2s"]).await;
    world.create("ghost", spec(None)).await;
    let obj = world.wait_condition("ghost", "Stalled", "True").await;
    let stalled = obj.condition("Stalled").expect("Stalled");
    assert_eq!(stalled.reason, "InvocationNotFound");
    assert!(stalled.message.contains("2s"), "{}", stalled.message);
    assert_eq!(conditions_row(&obj), ["False", "False", "True", "True"]);
    // Re-checks are 10 x --poll-interval-max (10 s) apart: none in a 3 s window.
    let before = sim.total_calls();
    observe_quietly(Duration::from_secs(3)).await;
    let after = sim.total_calls();
    assert!(after <= before + 1, "hot loop: {before} -> {after} calls");
    assert!(world
        .event_reasons("ghost")
        .await
        .contains(&"InvocationNotFound".to_string()));
    operator.stop().await;
}

pub async fn wrong_plugin_name_stalls_without_a_hot_loop(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "wrong-plugin", &[]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::succeeding(PLUGIN, ms(500)),
    ));
    world
        .create("typo", spec(Some("aws:runPowerShellScript")))
        .await;
    let obj = world.wait_condition("typo", "Stalled", "True").await;
    let stalled = obj.condition("Stalled").expect("Stalled");
    assert_eq!(stalled.reason, "InvalidPluginName");
    assert!(
        stalled.message.contains("fix the spec"),
        "{}",
        stalled.message
    );
    assert_eq!(conditions_row(&obj), ["False", "False", "True", "True"]);
    let before = sim.total_calls();
    observe_quietly(Duration::from_secs(3)).await;
    assert_eq!(sim.total_calls(), before, "no retry until the spec changes");
    assert!(world
        .event_reasons("typo")
        .await
        .contains(&"InvalidPluginName".to_string()));
    operator.stop().await;
}

pub async fn throttling_storm_still_ends_right(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "throttled", &[]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::succeeding(PLUGIN, ms(1000)),
    ));
    sim.inject(Fault::Throttle { count: 30 });
    sim.inject(Fault::ServerError { count: 3 });
    sim.inject(Fault::DropConnection { count: 2 });
    world.create("storm", spec(None)).await;
    let obj = world.wait_condition("storm", "Ready", "True").await;
    assert_eq!(
        obj.status.and_then(|s| s.status),
        Some("Success".to_string())
    );
    assert!(sim.total_calls() > 30, "the storm was served");
    let reasons = world.event_reasons("storm").await;
    assert!(reasons.contains(&"Throttled".to_string()), "{reasons:?}");
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains("outcome=\"Throttled\""),
        "throttling counted in metrics"
    );
    operator.stop().await;
}

pub async fn two_plugins_of_one_command_are_tracked_separately(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "two-plugins", &[]).await;
    sim.add_command(
        Command::new(COMMAND_ID)
            .document("Ops-PatchAndVerify", "3")
            .invocation(
                Invocation::new(INSTANCE_ID)
                    .plugin(Plugin::succeeding("patch", ms(600)).stdout("patched\n"))
                    .plugin(
                        Plugin::new("verify")
                            .step(ms(700), Status::InProgress)
                            .step_with(ms(1200), Status::Failed, "Failed", 2)
                            .stderr("service did not start\n"),
                    ),
            ),
    );
    world.create("step-patch", spec(Some("patch"))).await;
    world.create("step-verify", spec(Some("verify"))).await;
    let patch = world.wait_condition("step-patch", "Finished", "True").await;
    let verify = world
        .wait_condition("step-verify", "Finished", "True")
        .await;
    let p = patch.status.expect("status");
    let v = verify.status.expect("status");
    assert_eq!(
        (p.status.as_deref(), p.response_code),
        (Some("Success"), Some(0))
    );
    assert_eq!(
        (v.status.as_deref(), v.response_code),
        (Some("Failed"), Some(2))
    );
    assert_eq!(p.plugin_name.as_deref(), Some("patch"));
    assert_eq!(v.plugin_name.as_deref(), Some("verify"));
    assert_eq!(
        v.standard_error_content.as_deref(),
        Some("service did not start\n")
    );
    assert_eq!(p.document_version.as_deref(), Some("3"));
    operator.stop().await;
}

pub async fn full_size_output_is_stored_bounded(cluster: Arc<TestCluster>) {
    let (world, sim, operator) =
        setup(cluster, "big-output", &["--max-output-chars", "4000"]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::succeeding(PLUGIN, ms(300))
            .stdout("o".repeat(30_000))
            .stderr("e".repeat(9_000)),
    ));
    world.create("chatty", spec(None)).await;
    let obj = world.wait_condition("chatty", "Ready", "True").await;
    let s = obj.status.expect("status");
    let out = s.standard_output_content.expect("stdout");
    let err = s.standard_error_content.expect("stderr");
    assert_eq!(out.chars().count(), 4000);
    assert_eq!(err.chars().count(), 4000);
    assert!(out.ends_with(CUT_MARKER) && err.ends_with(CUT_MARKER));
    assert!(out.starts_with("oooo"));
    operator.stop().await;
}

pub async fn operator_killed_mid_flight_and_restarted_ends_right(cluster: Arc<TestCluster>) {
    let (world, sim, first) = setup(cluster, "restart", &[]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::new(PLUGIN)
            .step(ms(200), Status::InProgress)
            .step(ms(4000), Status::Success)
            .stdout("done\n"),
    ));
    world.create("survivor", spec(None)).await;
    world.wait_status("survivor", "InProgress").await;
    first.kill();
    let second = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: vec![],
            ..OperatorOptions::default()
        },
    );
    let obj = world.wait_condition("survivor", "Ready", "True").await;
    let s = obj.status.clone().expect("status");
    assert_eq!(s.standard_output_content.as_deref(), Some("done\n"));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(conditions_row(&obj), ["True", "False", "False", "True"]);
    second.stop().await;
}

pub async fn spec_change_is_tracked_again_with_new_generation(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "spec-change", &[]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::succeeding(PLUGIN, ms(300)).stdout("first run\n"),
    ));
    world.create("retarget", spec(None)).await;
    let first = world.wait_condition("retarget", "Ready", "True").await;
    let s = first.status.clone().expect("status");
    assert_eq!(s.standard_output_content.as_deref(), Some("first run\n"));
    assert!(s.execution_end_date_time.is_some(), "{s:?}");
    // The new command runs for a while: InProgress at once, Failed 4 s later.
    sim.add_command(one_invocation(
        OTHER_COMMAND_ID,
        Plugin::new(PLUGIN)
            .step(Duration::ZERO, Status::InProgress)
            .step_with(ms(4000), Status::Failed, "Failed", 3),
    ));
    world
        .api()
        .patch(
            "retarget",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"commandId": OTHER_COMMAND_ID}})),
        )
        .await
        .expect("patch spec");
    world
        .wait_for("retarget", "generation 2 in progress", |o| {
            o.status.as_ref().is_some_and(|s| {
                s.observed_generation == Some(2) && s.status.as_deref() == Some("InProgress")
            })
        })
        .await;
    // As stored on the API server: nothing of the first run is left while the second runs
    // (the status is one atomic value, replaced whole by each write), and no `null` either.
    let stored = get_json(&world, "retarget").await;
    let status = &stored["status"];
    assert_eq!(status["status"], "InProgress", "still running: {status:#}");
    for gone in ["standardOutputContent", "executionEndDateTime"] {
        assert!(
            status.get(gone).is_none(),
            "{gone} of generation 1 still in the status of generation 2: {status:#}"
        );
    }
    // The operator owns the status as one field: no per-leaf bookkeeping in managedFields.
    let shown = world
        .kubectl(&[
            "get",
            "cinv",
            "retarget",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .await;
    let stored: serde_json::Value = serde_json::from_str(&shown).expect("kubectl json");
    let owned: Vec<&serde_json::Value> = stored["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|m| m["manager"] == "ssm-operator")
        .map(|m| &m["fieldsV1"])
        .collect();
    assert_eq!(owned, [&json!({"f:status": {}})], "{stored:#}");
    let obj = world
        .wait_for("retarget", "generation 2 finished", |o| {
            o.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == Some(2))
                && o.condition("Finished").is_some_and(|c| c.status == "True")
        })
        .await;
    let s = obj.status.clone().expect("status");
    assert_eq!(
        (s.status.as_deref(), s.response_code),
        (Some("Failed"), Some(3))
    );
    assert!(obj
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .all(|c| c.observed_generation == Some(2)));
    assert_eq!(conditions_row(&obj), ["False", "False", "True", "True"]);
    operator.stop().await;
}

pub async fn finished_resources_are_never_polled_again(cluster: Arc<TestCluster>) {
    let (world, sim, operator) = setup(cluster, "no-repoll", &[]).await;
    sim.add_command(one_invocation(
        COMMAND_ID,
        Plugin::succeeding(PLUGIN, ms(200)),
    ));
    world.create("done-once", spec(None)).await;
    world.wait_condition("done-once", "Finished", "True").await;
    let calls = sim.total_calls();
    observe_quietly(Duration::from_secs(2)).await;
    assert_eq!(sim.total_calls(), calls, "polled after Finished");
    operator.stop().await;

    // A new operator process lists the finished resource and still asks SSM nothing.
    let restarted = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: vec![],
            ..OperatorOptions::default()
        },
    );
    // Once its cache holds the finished resource, it has had every chance to reconcile it.
    restarted
        .metrics_containing("ssm_operator_invocations{status=\"Success\"} 1")
        .await;
    observe_quietly(Duration::from_secs(2)).await;
    assert_eq!(sim.total_calls(), calls, "polled after restart");
    restarted.stop().await;
}
