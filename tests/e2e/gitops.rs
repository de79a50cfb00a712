//! GitOps gating with the real clients: Helm 4's `--wait` (kstatus, as Flux uses it) and
//! `kubectl wait` on a release or object holding CommandInvocations or a Command, also when
//! the operator starts only after they were applied, or never.
//!
//! The CRD defaults a missing status to `{observedGeneration: -1}`
//! ([`NOT_OBSERVED`]): kstatus would otherwise call a custom resource without status Current
//! at once, and `helm install --wait` would return before the operator had looked at it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use ssm_operator::api::{
    Command as SsmCommand, CommandInvocation, CommandInvocationSpec, NOT_OBSERVED,
};
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;
use tokio::process::Child;

use crate::support::{
    spec, ssm_status, Operator, OperatorOptions, World, COMMAND_ID, DEADLINE, INSTANCE_ID,
};

const PLUGIN: &str = "aws:runShellScript";
/// The CommandInvocation the gate chart holds.
const INVOCATION: &str = "gate-patch";
/// The Helm release (releases are per namespace, and every scenario has its own).
const RELEASE: &str = "gate";
/// How long helm must be seen still waiting while no operator runs: a deliberate "nothing may
/// happen" window, not a synchronisation.
const NO_OPERATOR_WINDOW: Duration = Duration::from_secs(4);
/// A second command, for scenarios that need one succeeding and one failing invocation.
const FAILING_COMMAND_ID: &str = "3c9a1f0e-7d2b-4e8a-9f61-2a4b6c8d0e13";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A one-template chart holding a CommandInvocation, as a GitOps repository would, written
/// into the world's temporary directory.
fn write_chart(world: &World) -> PathBuf {
    let chart = world.dir.path().join("gate-chart");
    std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: gate\nversion: 0.1.0\n",
    )
    .expect("Chart.yaml");
    std::fs::write(
        chart.join("templates/invocation.yaml"),
        format!(
            "apiVersion: ssm.operator.dev/v1alpha1\nkind: CommandInvocation\nmetadata:\n  name: {INVOCATION}\nspec:\n  commandId: {COMMAND_ID}\n  instanceId: {INSTANCE_ID}\n  pluginName: {PLUGIN}\n"
        ),
    )
    .expect("template");
    chart
}

/// Starts `helm install --wait --timeout <timeout>` of `chart` into the world's namespace.
fn start_helm_install(world: &World, chart: &Path, timeout: &str) -> Child {
    world
        .cluster
        .helm()
        .args(["install", RELEASE, &chart.to_string_lossy()])
        .args(["--namespace", &world.namespace])
        .args(["--wait", "--timeout", timeout])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start helm install --wait")
}

/// Waits for helm to exit and returns its output and the moment its exit was seen.
async fn helm_result(helm: Child) -> (Output, Timestamp) {
    let out = tokio::time::timeout(DEADLINE, helm.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("helm install --wait still running after {DEADLINE:?}"))
        .expect("helm ran");
    (out, Timestamp::now())
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that helm is still running throughout `window` (it may not return while nothing
/// can make the release Current).
async fn assert_still_waiting(helm: &mut Child, window: Duration, why: &str) {
    if let Ok(status) = tokio::time::timeout(window, helm.wait()).await {
        panic!("helm install --wait returned ({status:?}) {why}");
    }
}

/// Waits until the chart's CommandInvocation exists and checks that the API server defaulted
/// its status to "not observed" (no operator has written it).
async fn assert_created_not_observed(world: &World) -> CommandInvocation {
    let created = world.wait_for(INVOCATION, "creation", |_| true).await;
    assert_not_observed(&created);
    created
}

fn assert_not_observed(obj: &CommandInvocation) {
    let status = obj
        .status
        .as_ref()
        .expect("status defaulted by the CRD schema");
    assert_eq!(
        status.observed_generation,
        Some(NOT_OBSERVED),
        "{status:#?}"
    );
    assert_eq!(status.status, None, "{status:#?}");
    assert!(status.conditions.is_empty(), "{status:#?}");
}

/// The `lastTransitionTime` of condition `type_`, which must be True.
/// The `lastTransitionTime` of condition `type_` (of either kind), which must be True.
fn true_since(condition: Option<&Condition>, type_: &str) -> Timestamp {
    let condition = condition.unwrap_or_else(|| panic!("no {type_} condition"));
    assert_eq!(condition.status, "True", "{type_}: {condition:#?}");
    condition.last_transition_time.0
}

fn operator_for(world: &World, sim: &Simulator) -> Operator {
    Operator::start(
        world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            ..OperatorOptions::default()
        },
    )
}

/// `helm install --wait` started before the operator: still waiting while no operator runs,
/// exit 0 only after Ready=True.
pub async fn helm_wait_returns_only_once_the_invocation_succeeded(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "helm-wait-success").await;
    let chart = write_chart(&world);
    let mut helm = start_helm_install(&world, &chart, "60s");

    // Before any operator has looked at it, the server reports it as not yet observed, and
    // helm keeps waiting.
    assert_created_not_observed(&world).await;
    assert_still_waiting(&mut helm, NO_OPERATOR_WINDOW, "while no operator runs").await;
    assert_not_observed(&world.api().get(INVOCATION).await.expect("get"));

    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(ms(500), Status::InProgress)
                    .step(ms(2000), Status::Success),
            ),
        ),
    );
    let operator = operator_for(&world, &sim);

    let (out, returned) = helm_result(helm).await;
    // Read the resource the moment helm returned: the gate must have waited for Success.
    let at_return = world.api().get(INVOCATION).await.expect("get");
    assert!(
        out.status.success(),
        "helm install --wait failed: {}",
        describe(&out)
    );
    assert_eq!(
        ssm_status(&at_return),
        Some("Success"),
        "helm returned before the invocation succeeded: {:#?}",
        at_return.status
    );
    let ready_since = true_since(at_return.condition("Ready"), "Ready");
    assert!(
        ready_since <= returned,
        "Ready=True at {ready_since}, after helm returned at {returned}"
    );
    operator.stop().await;
}

/// `helm install --wait` of a command that fails: Helm exits non-zero on kstatus Failed.
pub async fn helm_wait_fails_when_the_command_fails(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "helm-wait-failed").await;
    let chart = write_chart(&world);
    // Helm's kstatus watcher waits for every object to be Current: a Failed one never is, so
    // helm gives up at its timeout, kept short here.
    let mut helm = start_helm_install(&world, &chart, "20s");

    assert_created_not_observed(&world).await;
    assert_still_waiting(&mut helm, NO_OPERATOR_WINDOW, "while no operator runs").await;

    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(ms(500), Status::InProgress)
                    .step_with(ms(2000), Status::Failed, "Failed", 1)
                    .stderr("patch failed\n"),
            ),
        ),
    );
    let operator = operator_for(&world, &sim);

    let failed = world.wait_condition(INVOCATION, "Stalled", "True").await;
    assert_eq!(ssm_status(&failed), Some("Failed"), "{:#?}", failed.status);
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.response_code),
        Some(1)
    );
    assert_eq!(
        failed.condition("Ready").map(|c| c.status.as_str()),
        Some("False")
    );

    let (out, returned) = helm_result(helm).await;
    assert!(
        !out.status.success(),
        "helm install --wait succeeded on a failed command: {}",
        describe(&out)
    );
    let stalled_since = true_since(failed.condition("Stalled"), "Stalled");
    assert!(
        stalled_since <= returned,
        "Stalled=True at {stalled_since}, after helm returned at {returned}"
    );
    // kstatus saw the object as Failed (Stalled=True), not merely still in progress. (Helm
    // 4.1 stops at once then: "resource CommandInvocation/<ns>/<name> not ready. status:
    // Failed, message: ...".)
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(INVOCATION) && stderr.contains("status: Failed"),
        "helm does not name the failed CommandInvocation: {}",
        describe(&out)
    );
    let after = world.api().get(INVOCATION).await.expect("get");
    assert_eq!(ssm_status(&after), Some("Failed"));
    operator.stop().await;
}

/// No operator at all: `helm install --wait` times out on the "not observed" default status.
pub async fn helm_wait_times_out_while_the_operator_is_stopped(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "helm-wait-no-operator").await;
    let chart = write_chart(&world);
    let helm = start_helm_install(&world, &chart, "8s");

    assert_created_not_observed(&world).await;
    let (out, _) = helm_result(helm).await;
    assert!(
        !out.status.success(),
        "helm install --wait succeeded with no operator running: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("timeout")
            || lower.contains("timed out")
            || lower.contains("context deadline exceeded"),
        "helm failed for another reason than its timeout: {}",
        describe(&out)
    );
    // kstatus read the defaulted status as InProgress (generation 1 vs observed -1).
    assert!(
        stderr.contains(INVOCATION) && stderr.contains("status: InProgress"),
        "helm does not name the CommandInvocation as in progress: {}",
        describe(&out)
    );
    assert_not_observed(&world.api().get(INVOCATION).await.expect("get"));
    let json = crate::support::get_json(&world, INVOCATION).await;
    assert_eq!(json["status"]["observedGeneration"], NOT_OBSERVED, "{json}");
}

/// `kubectl wait` run in the background.
fn start_kubectl_wait(world: &World, condition: &str, timeout: &str, name: &str) -> Child {
    world
        .cluster
        .kubectl()
        .args(["-n", &world.namespace, "wait"])
        .arg(format!("--for=condition={condition}"))
        .arg(format!("--timeout={timeout}"))
        .arg(format!("cinv/{name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kubectl wait")
}

async fn kubectl_result(kubectl: Child) -> Output {
    tokio::time::timeout(DEADLINE, kubectl.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl wait still running after {DEADLINE:?}"))
        .expect("kubectl ran")
}

/// `kubectl_ux::get_columns_describe_events_and_wait` already waits on `Finished` and then
/// `Ready` of a command that succeeds with the operator running. This adds what it leaves out:
/// waits started before the operator runs (on the defaulted status, no conditions yet), and a
/// failing command, where `Finished` returns but `Ready` never does.
pub async fn kubectl_wait_on_ready_and_finished(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "kubectl-wait").await;
    world.create("succeeds", spec(None)).await;
    world
        .create(
            "fails",
            CommandInvocationSpec {
                ttl_seconds_after_finished: None,
                command_id: FAILING_COMMAND_ID.into(),
                ..spec(None)
            },
        )
        .await;
    assert_not_observed(&world.api().get("succeeds").await.expect("get"));

    let ready_ok = start_kubectl_wait(&world, "Ready", "60s", "succeeds");
    let finished_ok = start_kubectl_wait(&world, "Finished", "60s", "succeeds");
    let finished_failed = start_kubectl_wait(&world, "Finished", "60s", "fails");

    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(ms(300), Status::InProgress)
                    .step(ms(2000), Status::Success),
            ),
        ),
    );
    sim.add_command(
        Command::new(FAILING_COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(ms(300), Status::InProgress)
                    .step_with(ms(2000), Status::Failed, "Failed", 1),
            ),
        ),
    );
    let operator = operator_for(&world, &sim);

    for (what, kubectl) in [
        ("Ready on the succeeding one", ready_ok),
        ("Finished on the succeeding one", finished_ok),
        ("Finished on the failing one", finished_failed),
    ] {
        let out = kubectl_result(kubectl).await;
        assert!(
            out.status.success(),
            "kubectl wait for {what}: {}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("condition met"),
            "kubectl wait for {what}: {}",
            describe(&out)
        );
    }
    let status = |name: &'static str| {
        let world = &world;
        async move {
            world
                .kubectl(&["get", "cinv", name, "-o", "jsonpath={.status.status}"])
                .await
        }
    };
    assert_eq!(status("succeeds").await, "Success");
    assert_eq!(status("fails").await, "Failed");

    // Ready never becomes True for a failed command: the wait ends with its timeout.
    let out = kubectl_result(start_kubectl_wait(&world, "Ready", "3s", "fails")).await;
    assert!(
        !out.status.success(),
        "kubectl wait --for=condition=Ready succeeded on a failed command: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "kubectl wait failed for another reason than its timeout: {}",
        describe(&out)
    );
    let failed = world.api().get("fails").await.expect("get");
    assert_eq!(
        failed.condition("Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    operator.stop().await;
}

/// The Command the command chart holds.
const COMMAND: &str = "gate-run";
/// The nodes it runs on.
const COMMAND_NODES: [&str; 2] = ["i-0bbbbbbbbbbbbbbb1", "i-0bbbbbbbbbbbbbbb2"];

/// A one-template chart holding a Command (`instanceIds`, AWS-RunShellScript), written into
/// the world's temporary directory.
fn write_command_chart(world: &World) -> PathBuf {
    let chart = world.dir.path().join("command-chart");
    std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: gate-command\nversion: 0.1.0\n",
    )
    .expect("Chart.yaml");
    let nodes: String = COMMAND_NODES
        .iter()
        .map(|n| format!("    - {n}\n"))
        .collect();
    std::fs::write(
        chart.join("templates/command.yaml"),
        format!(
            "apiVersion: ssm.operator.dev/v1alpha1\nkind: Command\nmetadata:\n  name: {COMMAND}\nspec:\n  documentName: AWS-RunShellScript\n  parameters:\n    commands:\n      - ./migrate.sh\n  instanceIds:\n{nodes}  comment: gated by helm --wait\n"
        ),
    )
    .expect("template");
    chart
}

fn command_api(world: &World) -> Api<SsmCommand> {
    world.api_of()
}

/// Waits until `done` holds for the chart's Command, following a watch.
async fn wait_command(world: &World, what: &str, done: impl Fn(&SsmCommand) -> bool) -> SsmCommand {
    world.wait_on(COMMAND, what, done).await
}

/// `helm install --wait` of a chart holding a Command: still waiting while no operator runs
/// (the CRD's "not observed" default), exit 0 only after the run succeeded on every node.
pub async fn helm_wait_gates_on_a_command_that_succeeds(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "helm-wait-cmd-success").await;
    let chart = write_command_chart(&world);
    let mut helm = start_helm_install(&world, &chart, "50s");

    let created = wait_command(&world, "creation", |_| true).await;
    let status = created.status.expect("status defaulted by the CRD schema");
    assert_eq!(
        status.observed_generation,
        Some(NOT_OBSERVED),
        "{status:#?}"
    );
    assert_eq!(status.command_id, None, "{status:#?}");
    assert_still_waiting(&mut helm, NO_OPERATOR_WINDOW, "while no operator runs").await;

    let sim = Simulator::start().await.expect("simulator");
    // Long enough that helm, were it not gated, would return while the run is in progress.
    sim.set_send_default([Plugin::succeeding("", ms(3000)).stdout("migrated\n")]);
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);

    let (out, returned) = helm_result(helm).await;
    // Read the Command the moment helm returned: the gate must have waited for Success.
    let at_return = command_api(&world).get(COMMAND).await.expect("get");
    assert!(
        out.status.success(),
        "helm install --wait failed: {}",
        describe(&out)
    );
    let s = at_return.status.clone().expect("status");
    assert_eq!(
        s.status.as_deref(),
        Some("Success"),
        "helm returned before the command succeeded: {s:#?}"
    );
    assert_eq!(
        (s.target_count, s.completed_count, s.error_count),
        (Some(2), Some(2), Some(0)),
        "{s:#?}"
    );
    assert_eq!(s.observed_generation, Some(1));
    let ready_since = true_since(at_return.condition("Ready"), "Ready");
    assert!(
        ready_since <= returned,
        "Ready=True at {ready_since}, after helm returned at {returned}"
    );
    // Sent once, by the operator, with the chart's comment and the marker.
    let sent = sim.sent();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    let marker = s.send.as_ref().map(|r| r.marker.clone()).expect("marker");
    assert_eq!(sent[0].comment, format!("gated by helm --wait {marker}"));
    assert_eq!(s.command_id.as_deref(), Some(sent[0].command_id.as_str()));
    operator.stop().await;
}

/// `helm install --wait` of a Command one of whose nodes fails: the Command stalls as Failed
/// and helm exits non-zero (kstatus Failed), naming it.
pub async fn helm_wait_fails_when_a_command_fails(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "helm-wait-cmd-failed").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", ms(1000))]);
    sim.script_instance(
        Invocation::new(COMMAND_NODES[1])
            .plugin(Plugin::failing_at("", ms(500), ms(2000), 2).stderr("migration failed\n")),
    );
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    let chart = write_command_chart(&world);
    // A Failed object is never Current: helm stops on kstatus Failed (Helm 4.1), or at the
    // latest at this timeout.
    let helm = start_helm_install(&world, &chart, "30s");

    let failed = wait_command(&world, "Stalled=True", |c| {
        c.condition("Stalled").is_some_and(|c| c.status == "True")
    })
    .await;
    let s = failed.status.clone().expect("status");
    assert_eq!(s.status.as_deref(), Some("Failed"), "{s:#?}");
    assert_eq!(
        (s.target_count, s.completed_count, s.error_count),
        (Some(2), Some(2), Some(1)),
        "{s:#?}"
    );
    assert_eq!(
        failed.condition("Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    assert_eq!(
        failed.condition("Finished").map(|c| c.status.as_str()),
        Some("True")
    );

    let (out, returned) = helm_result(helm).await;
    assert!(
        !out.status.success(),
        "helm install --wait succeeded on a failed command: {}",
        describe(&out)
    );
    let stalled_since = true_since(failed.condition("Stalled"), "Stalled");
    assert!(
        stalled_since <= returned,
        "Stalled=True at {stalled_since}, after helm returned at {returned}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("Command/{}/{COMMAND}", world.namespace))
            && stderr.contains("status: Failed"),
        "helm does not name the failed Command: {}",
        describe(&out)
    );
    // The failing node's child says why.
    let child = world
        .wait_status(&format!("{COMMAND}-{}", COMMAND_NODES[1]), "Failed")
        .await;
    let cs = child.status.expect("child status");
    assert_eq!(cs.response_code, Some(2));
    assert_eq!(
        cs.standard_error_content.as_deref(),
        Some("migration failed\n")
    );
    assert_eq!(sim.sent().len(), 1, "sent once");
    operator.stop().await;
}
