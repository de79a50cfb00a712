//! Lifecycle end to end: finished resources expire after `ttlSecondsAfterFinished` (or
//! `--ttl-after-finished`), a `Command`'s children go with it through Kubernetes' garbage
//! collector (the test bed runs kube-controller-manager), a TTL change on a finished resource
//! is honoured without asking SSM again or sending again, GitOps-tracked `Command`s need an
//! opt-in, and deleting a namespace cancels its running `Command`s (and waits on the finalizer
//! while the operator is stopped).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use ssm_operator::api::{Command, CommandInvocation, CommandSpec};
use ssm_operator::k8s::leader::Fence;
use ssm_operator::k8s::writer::Writer;
use ssm_operator::runtime::metrics::Metrics;
use ssm_sim::{Invocation, Plugin, Simulator};
use testbed::TestCluster;

use crate::support::{
    observe_quietly, poll_until, spec, Operator, OperatorOptions, World, COMMAND_ID, INSTANCE_ID,
};

const PLUGIN: &str = "aws:runShellScript";
const NODES: [&str; 2] = ["i-0bbbbbbbbbbbbbbb1", "i-0bbbbbbbbbbbbbbb2"];

fn command_spec(ttl: Option<i64>) -> CommandSpec {
    CommandSpec {
        document_name: "AWS-RunShellScript".into(),
        parameters: Some([("commands".to_string(), vec!["echo hi".to_string()])].into()),
        instance_ids: Some(NODES.iter().map(|s| s.to_string()).collect()),
        ttl_seconds_after_finished: ttl,
        ..CommandSpec::default()
    }
}

fn operator(world: &World, sim: &Simulator, args: &[&str]) -> Operator {
    Operator::start(
        world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..OperatorOptions::default()
        },
    )
}

async fn create_command(world: &World, command: Command) {
    let name = command.name_any();
    world
        .api_of::<Command>()
        .create(&PostParams::default(), &command)
        .await
        .unwrap_or_else(|e| panic!("create Command {name}: {e}"));
}

async fn children(world: &World, name: &str) -> Vec<CommandInvocation> {
    world
        .api()
        .list(&ListParams::default().labels(&format!("ssm.operator.dev/command={name}")))
        .await
        .expect("list children")
        .items
}

fn finished_at(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Timestamp {
    conditions
        .iter()
        .find(|c| c.type_ == "Finished" && c.status == "True")
        .map(|c| c.last_transition_time.0)
        .expect("Finished=True")
}

async fn patch_ttl<K>(world: &World, name: &str, ttl: i64)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let patch = json!({"spec": {"ttlSecondsAfterFinished": ttl}});
    world
        .api_of::<K>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patch the TTL of {name}: {e}"));
}

pub async fn an_invocation_expires_after_its_ttl_and_a_ttl_change_is_honoured(
    cluster: Arc<TestCluster>,
) {
    let world = World::new(cluster, "ttl-cinv").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(ssm_sim::Command::new(COMMAND_ID).invocation(
        Invocation::new(INSTANCE_ID).plugin(Plugin::succeeding(PLUGIN, Duration::from_millis(300))),
    ));
    let operator = operator(&world, &sim, &[]);

    // With a TTL in the spec: gone that long after Finished turned True, not before.
    let mut short = spec(Some(PLUGIN));
    short.ttl_seconds_after_finished = Some(3);
    world.create("short", short).await;
    let keep = world.create("keep", spec(Some(PLUGIN))).await;
    let done = world.wait_condition("short", "Finished", "True").await;
    let finished = finished_at(&done.status.as_ref().expect("status").conditions);
    world.wait_gone::<CommandInvocation>("short").await;
    let gone_after = Timestamp::now().duration_since(finished).as_secs_f64();
    assert!(
        (2.0..15.0).contains(&gone_after),
        "deleted {gone_after:.1}s after Finished (TTL 3s; lastTransitionTime has whole seconds)"
    );

    // Without one (and no --ttl-after-finished): kept. Its TTL set after the finish: the
    // status moves to the new generation without asking SSM again, and the TTL counts from
    // the finish, which is long past for a TTL of 0.
    let finished = world.wait_condition("keep", "Finished", "True").await;
    assert_eq!(finished.uid(), keep.uid());
    let calls = sim.total_calls();
    patch_ttl::<CommandInvocation>(&world, "keep", 3600).await;
    let moved = world
        .wait_for("keep", "observedGeneration 2", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == Some(2))
        })
        .await;
    let status = moved.status.expect("status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert!(status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(2)));
    assert_eq!(
        finished_at(&status.conditions),
        finished_at(&finished.status.expect("status").conditions),
        "the finish did not move"
    );
    observe_quietly(Duration::from_secs(2)).await;
    assert!(
        world.api().get_opt("keep").await.expect("get").is_some(),
        "TTL 1h: kept"
    );
    assert_eq!(
        sim.total_calls(),
        calls,
        "a TTL-only change asks SSM nothing"
    );
    patch_ttl::<CommandInvocation>(&world, "keep", 0).await;
    world.wait_gone::<CommandInvocation>("keep").await;
    assert_eq!(sim.total_calls(), calls, "nor does the expiry");
    assert!(operator
        .log()
        .contains("deleted: finished longer ago than its TTL"));
    operator.stop().await;
}

pub async fn a_command_deleted_by_its_ttl_loses_its_children_through_the_garbage_collector(
    cluster: Arc<TestCluster>,
) {
    assert!(
        cluster.has_controller_manager(),
        "the test bed needs kube-controller-manager (hack/envtest-assets.sh builds it)"
    );
    let world = World::new(cluster, "ttl-cmd").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(300))]);
    // The default TTL (1s) would expire a CommandInvocation without a controller owner; the
    // children have one, so they wait for their Command (TTL 5s in its spec).
    let operator = operator(
        &world,
        &sim,
        &["--send-commands", "--ttl-after-finished", "1s"],
    );
    create_command(&world, Command::new("nightly", command_spec(Some(5)))).await;
    let done = world
        .wait_on::<Command>("nightly", "Finished", |c| {
            c.condition("Finished").is_some_and(|f| f.status == "True")
        })
        .await;
    let kids = poll_until("both children finished", || {
        let world = &world;
        async move {
            let kids = children(world, "nightly").await;
            (kids.len() == 2
                && kids
                    .iter()
                    .all(|k| k.condition("Finished").is_some_and(|f| f.status == "True")))
            .then_some(kids)
        }
    })
    .await;
    observe_quietly(Duration::from_secs(2)).await;
    assert_eq!(
        children(&world, "nightly").await.len(),
        2,
        "children never expire on their own (the 1s default is not theirs)"
    );
    world.wait_gone::<Command>("nightly").await;
    let gone_after =
        Timestamp::now().duration_since(finished_at(&done.status.expect("status").conditions));
    assert!(gone_after.as_secs_f64() >= 4.0, "TTL 5s: {gone_after:?}");
    for kid in &kids {
        world.wait_gone::<CommandInvocation>(&kid.name_any()).await;
    }
    assert!(sim.cancelled().is_empty(), "a TTL deletion cancels nothing");
    assert_eq!(sim.sent().len(), 1);
    operator.stop().await;
}

pub async fn a_ttl_change_on_a_finished_command_sends_nothing_and_is_honoured(
    cluster: Arc<TestCluster>,
) {
    let world = World::new(cluster, "ttl-cmd-change").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(300))]);
    let operator = operator(&world, &sim, &["--send-commands"]);
    create_command(&world, Command::new("once", command_spec(None))).await;
    let done = world
        .wait_on::<Command>("once", "Finished", |c| {
            c.condition("Finished").is_some_and(|f| f.status == "True")
        })
        .await;
    let first = done.status.clone().expect("status");
    patch_ttl::<Command>(&world, "once", 3600).await;
    let moved = world
        .wait_on::<Command>("once", "observedGeneration 2", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == Some(2))
        })
        .await;
    let status = moved.status.expect("status");
    assert_eq!(status.command_id, first.command_id, "the same run");
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert_eq!(status.send.as_ref().map(|s| s.generation), Some(2));
    assert_eq!(
        status.send.as_ref().map(|s| s.marker.clone()),
        first.send.as_ref().map(|s| s.marker.clone())
    );
    observe_quietly(Duration::from_secs(2)).await;
    assert_eq!(sim.sent().len(), 1, "a TTL-only change sends nothing");
    patch_ttl::<Command>(&world, "once", 1).await;
    world.wait_gone::<Command>("once").await;
    assert_eq!(sim.sent().len(), 1);
    assert!(sim.cancelled().is_empty());
    operator.stop().await;
}

pub async fn a_gitops_tracked_command_is_not_deleted_without_the_opt_in(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "ttl-gitops").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([Plugin::succeeding("", Duration::from_millis(300))]);
    let operator = operator(&world, &sim, &["--send-commands"]);
    let mut command = Command::new("synced", command_spec(Some(1)));
    command
        .labels_mut()
        .insert("kustomize.toolkit.fluxcd.io/name".into(), "ops".into());
    create_command(&world, command).await;
    world
        .wait_on::<Command>("synced", "Finished", |c| {
            c.condition("Finished").is_some_and(|f| f.status == "True")
        })
        .await;
    let reasons = poll_until("the TTLRefusedGitOps Event", || {
        let world = &world;
        async move {
            let reasons = world.event_reasons("synced").await;
            reasons
                .iter()
                .any(|r| r == "TTLRefusedGitOps")
                .then_some(reasons)
        }
    })
    .await;
    assert!(
        reasons.contains(&"TTLRefusedGitOps".to_string()),
        "{reasons:?}"
    );
    observe_quietly(Duration::from_secs(2)).await;
    assert!(
        world
            .api_of::<Command>()
            .get_opt("synced")
            .await
            .expect("get")
            .is_some(),
        "TTL 1s, but Flux would recreate it: kept"
    );
    assert!(operator
        .log()
        .contains("TTL not applied to a GitOps-tracked Command"));

    let opt_in = json!({"metadata": {"annotations": {"ssm.operator.dev/ttl-with-gitops": "true"}}});
    world
        .api_of::<Command>()
        .patch("synced", &PatchParams::default(), &Patch::Merge(&opt_in))
        .await
        .expect("opt in");
    world.wait_gone::<Command>("synced").await;
    assert_eq!(sim.sent().len(), 1);
    operator.stop().await;
}

async fn running_command(world: &World, sim: &Simulator, name: &str) -> String {
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(600))]);
    create_command(world, Command::new(name, command_spec(None))).await;
    let running = world
        .wait_on::<Command>(name, "a command id and its children", |c| {
            c.status.as_ref().is_some_and(|s| s.command_id.is_some())
        })
        .await;
    poll_until("the children", || async {
        (children(world, name).await.len() == 2).then_some(())
    })
    .await;
    running.status.and_then(|s| s.command_id).expect("id")
}

async fn wait_namespace_gone(world: &World) {
    let namespaces = Api::<Namespace>::all(world.client.clone());
    poll_until(&format!("namespace {} to be gone", world.namespace), || {
        let namespaces = &namespaces;
        async move {
            namespaces
                .get_opt(&world.namespace)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await;
}

async fn delete_namespace(world: &World) {
    Api::<Namespace>::all(world.client.clone())
        .delete(&world.namespace, &DeleteParams::default())
        .await
        .expect("delete namespace");
}

pub async fn deleting_a_namespace_cancels_its_running_commands_and_the_namespace_goes(
    cluster: Arc<TestCluster>,
) {
    assert!(
        cluster.has_controller_manager(),
        "needs kube-controller-manager"
    );
    let world = World::new(cluster, "ttl-ns-delete").await;
    let sim = Simulator::start().await.expect("simulator");
    let operator = operator(&world, &sim, &["--send-commands"]);
    let command_id = running_command(&world, &sim, "long").await;
    delete_namespace(&world).await;
    wait_namespace_gone(&world).await;
    assert_eq!(sim.cancelled(), vec![command_id], "cancelled in SSM first");
    operator.stop().await;
}

pub async fn with_the_operator_stopped_a_namespace_waits_on_the_finalizer(
    cluster: Arc<TestCluster>,
) {
    assert!(
        cluster.has_controller_manager(),
        "needs kube-controller-manager"
    );
    let world = World::new(cluster, "ttl-ns-stopped").await;
    let sim = Simulator::start().await.expect("simulator");
    let operator = operator(&world, &sim, &["--send-commands"]);
    running_command(&world, &sim, "long").await;
    operator.stop().await;

    delete_namespace(&world).await;
    // The namespace controller deletes what it can (the children) and then waits for the
    // Command's finalizer, and says so in the namespace's conditions.
    let namespaces = Api::<Namespace>::all(world.client.clone());
    let waiting = poll_until("the namespace to wait on the finalizer", || {
        let (namespaces, name) = (&namespaces, &world.namespace);
        async move {
            let ns = namespaces.get(name).await.ok()?;
            let conditions = ns.status.as_ref()?.conditions.as_ref()?;
            conditions
                .iter()
                .find(|c| {
                    c.type_ == "NamespaceFinalizersRemaining"
                        && c.status == "True"
                        && c.message
                            .as_deref()
                            .is_some_and(|m| m.contains("ssm.operator.dev/cancel"))
                })
                .map(|_| ns.clone())
        }
    })
    .await;
    assert_eq!(
        waiting.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(
        children(&world, "long").await.is_empty(),
        "the children went"
    );
    let command = world
        .api_of::<Command>()
        .get("long")
        .await
        .expect("still there");
    assert!(command.metadata.deletion_timestamp.is_some());
    observe_quietly(Duration::from_secs(2)).await;
    assert!(namespaces
        .get_opt(&world.namespace)
        .await
        .expect("get")
        .is_some());

    // Released by hand as docs/command.md says (nothing is cancelled then).
    world
        .kubectl(&[
            "patch",
            "command",
            "long",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .await;
    wait_namespace_gone(&world).await;
    assert!(sim.cancelled().is_empty());
}

pub async fn an_expired_object_is_deleted_only_by_its_uid(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "ttl-uid").await;
    let old = world.create("reused", spec(None)).await;
    world
        .api()
        .delete("reused", &DeleteParams::default())
        .await
        .expect("delete");
    world.wait_gone::<CommandInvocation>("reused").await;
    let newer = world.create("reused", spec(None)).await;
    let writer = Writer::new(
        world.client.clone(),
        None,
        Arc::new(Metrics::new()),
        Fence::open(),
    );
    // The old object (as a stale cache would hold it) names the newer one's name.
    assert!(!writer.delete_expired(&old).await.expect("delete call"));
    let still = world
        .api()
        .get("reused")
        .await
        .expect("the newer object stays");
    assert_eq!(still.uid(), newer.uid());
    assert!(writer.delete_expired(&newer).await.expect("delete call"));
    world.wait_gone::<CommandInvocation>("reused").await;
}
