//! GitOps gating as users run it: Helm 4's `--wait` (kstatus, as Flux uses) on a release that
//! contains a CommandInvocation returns only once the invocation succeeded, even when the
//! operator starts after the release was applied. Without the CRD's status default
//! (`observedGeneration: -1`) kstatus would call a resource without status Current at once.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ssm_operator::api::NOT_OBSERVED;
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;

use crate::support::{
    ssm_status, Operator, OperatorOptions, World, COMMAND_ID, DEADLINE, INSTANCE_ID,
};

const INVOCATION: &str = "gate-patch";

/// A one-template chart holding a CommandInvocation, as a GitOps repository would.
fn write_chart(dir: &std::path::Path) -> std::path::PathBuf {
    let chart = dir.join("gate");
    std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: gate\nversion: 0.1.0\n",
    )
    .expect("Chart.yaml");
    std::fs::write(
        chart.join("templates/invocation.yaml"),
        format!(
            "apiVersion: ssm.operator.dev/v1alpha1\nkind: CommandInvocation\nmetadata:\n  name: {INVOCATION}\nspec:\n  commandId: {COMMAND_ID}\n  instanceId: {INSTANCE_ID}\n"
        ),
    )
    .expect("template");
    chart
}

pub async fn helm_wait_returns_only_once_the_invocation_succeeded(cluster: Arc<TestCluster>) {
    let world = World::new(cluster.clone(), "helm-wait").await;
    let chart = write_chart(world.dir.path());
    let helm = cluster
        .helm()
        .args(["install", &world.namespace, &chart.to_string_lossy()])
        .args([
            "--namespace",
            &world.namespace,
            "--wait",
            "--timeout",
            "90s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start helm install --wait");

    // Before any operator has looked at it, the server reports it as not yet observed.
    let created = world.wait_for(INVOCATION, "creation", |_| true).await;
    let status = created.status.expect("status defaulted by the schema");
    assert_eq!(status.observed_generation, Some(NOT_OBSERVED));
    assert_eq!(status.status, None);

    let sim = Simulator::start().await.expect("simulator");
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            ..OperatorOptions::default()
        },
    );
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new("aws:runShellScript")
                    .step(Duration::from_millis(500), Status::InProgress)
                    .step(Duration::from_millis(3000), Status::Success),
            ),
        ),
    );

    let out = tokio::time::timeout(DEADLINE, helm.wait_with_output())
        .await
        .expect("helm install --wait returned")
        .expect("helm ran");
    // Read the resource the moment helm returned: the gate must have waited for Success.
    let at_return = world.api().get(INVOCATION).await.expect("get");
    assert!(
        out.status.success(),
        "helm install --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ssm_status(&at_return),
        Some("Success"),
        "helm returned before the invocation succeeded: {:?}",
        at_return.status
    );
    assert_eq!(
        at_return.condition("Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    operator.stop().await;
}
