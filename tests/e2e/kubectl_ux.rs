//! What a user sees with kubectl: printer columns, `describe` with Events, `kubectl wait` on
//! the contract's conditions; and the operator's HTTP endpoints.

use std::sync::Arc;
use std::time::Duration;

use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;

use crate::support::{get_json, spec, Operator, OperatorOptions, World, COMMAND_ID, INSTANCE_ID};

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn row(table: &str) -> Vec<String> {
    table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

pub async fn get_columns_describe_events_and_wait(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "kubectl").await;
    let sim = Simulator::start().await.expect("simulator");
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: vec![],
            ..OperatorOptions::default()
        },
    );
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new("aws:runShellScript")
                    .step(Duration::from_millis(300), Status::InProgress)
                    .step(Duration::from_millis(2500), Status::Success)
                    .stdout("ok\n"),
            ),
        ),
    );
    world
        .create("patch-web-1", spec(Some("aws:runShellScript")))
        .await;

    // `kubectl wait` started before the command finishes returns once it does.
    let waited = world
        .kubectl(&[
            "wait",
            "--for=condition=Finished",
            "--timeout=60s",
            "cinv/patch-web-1",
        ])
        .await;
    assert!(waited.contains("condition met"), "{waited}");
    let status = world
        .kubectl(&[
            "get",
            "cinv",
            "patch-web-1",
            "-o",
            "jsonpath={.status.status}",
        ])
        .await;
    assert_eq!(status, "Success");
    let ready = world
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=10s",
            "commandinvocation/patch-web-1",
        ])
        .await;
    assert!(ready.contains("condition met"), "{ready}");

    let table = world.kubectl(&["get", "cinv"]).await;
    assert_eq!(
        header(&table),
        ["NAME", "STATUS", "CODE", "INSTANCE", "AGE"],
        "{table}"
    );
    assert_eq!(
        &row(&table)[..4],
        ["patch-web-1", "Success", "0", INSTANCE_ID],
        "{table}"
    );
    let wide = world.kubectl(&["get", "cinv", "-o", "wide"]).await;
    assert_eq!(
        header(&wide),
        ["NAME", "STATUS", "CODE", "INSTANCE", "AGE", "COMMAND", "PLUGIN", "DETAILS"],
        "{wide}"
    );
    assert_eq!(
        &row(&wide)[5..],
        [COMMAND_ID, "aws:runShellScript", "Success"],
        "{wide}"
    );
    let by_category = world.kubectl(&["get", "ssm"]).await;
    assert!(
        by_category.contains("patch-web-1"),
        "category ssm: {by_category}"
    );

    let described = world.kubectl(&["describe", "cinv", "patch-web-1"]).await;
    for needle in [
        "Events:",
        "InProgress",
        "Success",
        "Standard Output Content:",
        "Observed Generation:",
    ] {
        assert!(
            described.contains(needle),
            "describe lacks {needle:?}:\n{described}"
        );
    }
    let json = get_json(&world, "patch-web-1").await;
    assert_eq!(json["status"]["standardOutputContent"], "ok\n");
    operator.stop().await;
}

pub async fn metrics_health_and_readiness_are_served(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "http").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(
        Command::new(COMMAND_ID).invocation(Invocation::new(INSTANCE_ID).plugin(
            Plugin::succeeding("aws:runShellScript", Duration::from_millis(200)),
        )),
    );
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: vec![],
            ..OperatorOptions::default()
        },
    );
    world.create("measured", spec(None)).await;
    world.wait_condition("measured", "Ready", "True").await;
    let metrics = operator.metrics().await;
    for needle in [
        "ssm_operator_ssm_calls_total{operation=\"ListCommandInvocations\",outcome=\"success\"}",
        "ssm_operator_ssm_rate_limit 100",
        "ssm_operator_tracked_commands",
        "ssm_operator_invocations{status=\"Success\"} 1",
        "ssm_operator_status_writes_total",
        "ssm_operator_reconciles_total",
        "ssm_operator_events_total",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    for path in ["healthz", "readyz"] {
        assert_eq!(
            operator.http_get_containing(path, "ok").await,
            "ok",
            "/{path}"
        );
    }
    operator.stop().await;
}
