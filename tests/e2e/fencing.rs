//! The leadership fence on the `Command` path, on the real API server: a replica that is not
//! sure it leads (a deposed leader waking up, or one paused past its Lease) must change
//! nothing, neither in the cluster nor in SSM. A real operator sends generation 1 and creates
//! its child, then stops; the spec moves to generation 2, and a replica whose fence is closed
//! reconciles it. Every step that generation would take (cancel the old run, delete its
//! child, add the finalizer, record the intent and its Event, send) is refused.

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ssm::config::Credentials;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use ssm_operator::api::{Command, CommandSpec};
use ssm_operator::aws::roles::Roles;
use ssm_operator::aws::ssm::Ssm;
use ssm_operator::command::reconcile::reconcile;
use ssm_operator::command::send::Policy;
use ssm_operator::command::Context;
use ssm_operator::k8s::leader::Fence;
use ssm_operator::k8s::writer::Writer;
use ssm_operator::runtime::metrics::Metrics;
use ssm_operator::tracking::schedule::PollIntervals;
use ssm_sim::{Plugin, Simulator};
use testbed::TestCluster;

use crate::support::{poll_until, Operator, World};

const NODE: &str = "i-0fe0ce0fe0ce0fe01";
const NAME: &str = "fenced";

/// Every Event of the namespace, by name with its resourceVersion.
async fn events(world: &World) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> =
        Api::<Event>::namespaced(world.client.clone(), &world.namespace)
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .iter()
            .map(|e| (e.name_any(), e.resource_version().unwrap_or_default()))
            .collect();
    all.sort();
    all
}

/// Each child of the Command with its resourceVersion.
async fn children(world: &World) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = world
        .api()
        .list(&ListParams::default().labels(&format!("ssm.operator.dev/command={NAME}")))
        .await
        .expect("list children")
        .items
        .iter()
        .map(|c| (c.name_any(), c.resource_version().unwrap_or_default()))
        .collect();
    all.sort();
    all
}

pub async fn a_fenced_replica_on_a_new_generation_changes_nothing(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "fenced-replica").await;
    let sim = Simulator::start().await.expect("simulator");
    // Generation 1 runs for a minute: still running when generation 2 arrives.
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(60))]);
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);
    let commands: Api<Command> = world.api_of();
    let spec = CommandSpec {
        document_name: "AWS-RunShellScript".into(),
        instance_ids: Some(vec![NODE.into()]),
        comment: Some("first".into()),
        ..CommandSpec::default()
    };
    commands
        .create(&PostParams::default(), &Command::new(NAME, spec))
        .await
        .expect("create Command");
    poll_until("generation 1 sent, with its child", || async {
        let sent = sim.calls("SendCommand") == 1;
        (sent && children(&world).await.len() == 1).then_some(())
    })
    .await;
    operator.stop().await;

    let patch = json!({"spec": {"comment": "second"}});
    let stored = commands
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("generation 2");
    assert_eq!(stored.metadata.generation, Some(2));
    let running = stored.status.as_ref().and_then(|s| s.status.clone());
    assert!(
        running.as_deref().is_some_and(|s| s != "Success"),
        "generation 1 still runs: {running:?}"
    );

    // A replica whose fence is closed: its Lease was never seen naming it.
    let metrics = Arc::new(Metrics::new());
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(sim.endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    let fence = Fence::for_lease("deposed", Duration::from_secs(15));
    let ctx = Arc::new(Context::new(
        world.client.clone(),
        Arc::new(Ssm::new(sdk, metrics.clone(), 100.0)),
        Arc::new(Roles::disabled()),
        Writer::new(
            world.client.clone(),
            Some("deposed".into()),
            metrics.clone(),
            fence,
        ),
        Policy::new(true, &[]).expect("no globs"),
        PollIntervals {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        Duration::from_secs(30),
        metrics,
        4,
    ));
    let events_before = events(&world).await;
    let children_before = children(&world).await;
    let calls_before = (sim.calls("CancelCommand"), sim.calls("SendCommand"));
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        reconcile(Arc::new(stored.clone()), ctx),
    )
    .await
    .expect("the fenced reconcile ends");

    let after = commands.get(NAME).await.expect("the Command");
    assert!(
        matches!(result, Err(ssm_operator::Error::Fenced)),
        "the reconcile ends fenced: {result:?}"
    );
    assert_eq!(
        after.resource_version(),
        stored.resource_version(),
        "the Command was not written (status, finalizer): {:?}",
        after.status
    );
    assert_eq!(
        children(&world).await,
        children_before,
        "generation 1's child was neither deleted nor changed"
    );
    assert_eq!(events(&world).await, events_before, "no Event recorded");
    assert_eq!(
        (sim.calls("CancelCommand"), sim.calls("SendCommand")),
        calls_before,
        "no CancelCommand and no SendCommand (CancelCommand, SendCommand)"
    );
}
