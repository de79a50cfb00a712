//! Cross-account access (`--namespace-roles`): a Namespace's `ssm.operator.dev/role-arn`
//! makes the operator ask SSM as that role, assumed through the project's own STS simulator
//! (moto's STS grants every role and always for an hour, so it can neither refuse a role nor
//! make credentials expire during a scenario). The operator watches two namespaces: A, with
//! the annotation, and B, without it (the operator's own identity, access key `test`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status, StsSimulator};
use testbed::TestCluster;

use crate::support::{spec, Operator, OperatorOptions, World, COMMAND_ID, INSTANCE_ID};

const PLUGIN: &str = "aws:runShellScript";
const ROLE: &str = "arn:aws:iam::111122223333:role/ssm-reader";
const REFUSED_ROLE: &str = "arn:aws:iam::444455556666:role/ssm-untrusted";
/// The operator's own access key (support.rs sets `AWS_ACCESS_KEY_ID=test`).
const OWN_KEY: &str = "test";
/// STS's words for a refused role (what the operator must pass on).
const STS_REFUSAL: &str = "is not authorized to perform: sts:AssumeRole";
/// `10 × --poll-interval-max` (1 s in support.rs): how often a stalled role is re-checked.
const RECHECK: Duration = Duration::from_secs(10);

/// Namespaces A (annotated by the scenario) and B (never annotated), the simulators and the
/// operator watching both with `--namespace-roles`.
struct Setup {
    a: World,
    b: World,
    sim: Simulator,
    sts: StsSimulator,
    operator: Operator,
}

/// Creates both namespaces, annotates A with `annotations` (before the operator starts, so
/// its first call already uses the role), and starts the operator.
async fn setup(cluster: Arc<TestCluster>, scenario: &str, annotations: Value) -> Setup {
    let a = World::new(cluster.clone(), &format!("{scenario}-a")).await;
    let b = World::new(cluster, &format!("{scenario}-b")).await;
    let sim = Simulator::start().await.expect("SSM simulator");
    let sts = StsSimulator::start().await.expect("STS simulator");
    annotate(&a, annotations).await;
    let operator = Operator::start(
        &a,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: vec![
                "--namespace".into(),
                b.namespace.clone(),
                "--namespace-roles".into(),
            ],
            env: vec![("AWS_ENDPOINT_URL_STS".into(), sts.endpoint())],
        },
    );
    Setup {
        a,
        b,
        sim,
        sts,
        operator,
    }
}

/// Merges `annotations` into the world's Namespace (a `null` value removes one).
async fn annotate(world: &World, annotations: Value) {
    Api::<Namespace>::all(world.client.clone())
        .patch(
            &world.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
        )
        .await
        .unwrap_or_else(|e| panic!("annotate namespace {}: {e}", world.namespace));
}

fn role_annotation(arn: &str) -> Value {
    json!({ "ssm.operator.dev/role-arn": arn })
}

/// The access keys STS issued for `world`'s namespace (session `ssm-operator-<namespace>`).
fn keys_for(sts: &StsSimulator, world: &World) -> Vec<String> {
    let session = format!("ssm-operator-{}", world.namespace);
    sts.assumed()
        .into_iter()
        .filter(|(_, name, _, _)| *name == session)
        .map(|(_, _, _, key)| key)
        .collect()
}

fn succeeding(after: Duration) -> Command {
    Command::new(COMMAND_ID).invocation(
        Invocation::new(INSTANCE_ID).plugin(Plugin::succeeding(PLUGIN, after).stdout("patched\n")),
    )
}

pub async fn each_namespace_is_asked_with_its_own_identity(cluster: Arc<TestCluster>) {
    let s = setup(cluster, "roles-own", role_annotation(ROLE)).await;
    s.sts.allow_role(ROLE, None);
    s.sim.add_command(succeeding(Duration::from_millis(1500)));
    // The same command and instance in both namespaces: only the identity tells them apart.
    s.a.create("patch", spec(None)).await;
    s.b.create("patch", spec(None)).await;
    for world in [&s.a, &s.b] {
        let obj = world.wait_condition("patch", "Ready", "True").await;
        let status = obj.status.expect("status");
        assert_eq!(status.status.as_deref(), Some("Success"));
        assert_eq!(status.standard_output_content.as_deref(), Some("patched\n"));
    }

    // STS was asked for A's role only, with A's session name.
    let assumed = s.sts.assumed();
    assert!(!assumed.is_empty(), "the role was never assumed");
    for (role, session, external_id, _) in &assumed {
        assert_eq!(role, ROLE);
        assert_eq!(*session, format!("ssm-operator-{}", s.a.namespace));
        assert_eq!(*external_id, None);
    }
    assert!(s.sts.refused().is_empty(), "{:?}", s.sts.refused());

    // SSM saw A's calls signed with the role's keys and B's with the operator's own: the
    // two resources were never answered by one shared call.
    let role_keys: BTreeSet<String> = keys_for(&s.sts, &s.a).into_iter().collect();
    let signers = s.sim.signers();
    assert!(
        signers
            .iter()
            .all(|k| k == OWN_KEY || role_keys.contains(k)),
        "unexpected signers {signers:?} (role keys {role_keys:?})"
    );
    let by_role: usize = role_keys.iter().map(|k| s.sim.calls_signed_by(k)).sum();
    assert!(by_role >= 1, "no SSM call signed by the role: {signers:?}");
    assert!(
        role_keys.iter().all(|k| k.starts_with("ASIA")),
        "{role_keys:?}"
    );
    assert!(
        s.sim.calls_signed_by(OWN_KEY) >= 1,
        "no SSM call with the operator's own identity: {signers:?}"
    );
    assert_eq!(
        by_role + s.sim.calls_signed_by(OWN_KEY),
        usize::try_from(s.sim.total_calls()).unwrap(),
        "every SSM call was signed by one of the two identities"
    );
    s.operator.stop().await;
}

pub async fn a_role_that_cannot_be_assumed_stalls_only_its_namespace(cluster: Arc<TestCluster>) {
    let s = setup(cluster, "roles-refused", role_annotation(REFUSED_ROLE)).await;
    s.sim.add_command(succeeding(Duration::from_millis(1500)));
    s.a.create("patch", spec(None)).await;
    s.b.create("patch", spec(None)).await;

    let obj =
        s.a.wait_for("patch", "Stalled=True with reason AssumeRoleFailed", |o| {
            o.condition("Stalled")
                .is_some_and(|c| c.status == "True" && c.reason == "AssumeRoleFailed")
        })
        .await;
    let stalled_at = Instant::now();
    let stalled = obj.condition("Stalled").expect("Stalled");
    assert!(
        stalled.message.contains(STS_REFUSAL) && stalled.message.contains(REFUSED_ROLE),
        "the Stalled message should carry STS's answer: {}",
        stalled.message
    );
    assert_eq!(
        obj.condition("Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    let refused = s.sts.refused();
    assert!(
        refused.iter().all(|(role, session, _)| role == REFUSED_ROLE
            && *session == format!("ssm-operator-{}", s.a.namespace)),
        "{refused:?}"
    );

    // B, without a role, is not held up by A's.
    let b = s.b.wait_condition("patch", "Ready", "True").await;
    assert_eq!(
        b.status.and_then(|st| st.status).as_deref(),
        Some("Success")
    );
    assert!(
        s.sim.signers().iter().all(|k| k == OWN_KEY),
        "{:?}",
        s.sim.signers()
    );

    // The trust policy is fixed to require an external id, and the Namespace gets it: the
    // annotation change wakes A's resource, well before the next re-check would.
    s.sts.allow_role(REFUSED_ROLE, Some("team-a-secret"));
    let fixed_at = Instant::now();
    annotate(
        &s.a,
        json!({ "ssm.operator.dev/external-id": "team-a-secret" }),
    )
    .await;
    let obj = s.a.wait_condition("patch", "Ready", "True").await;
    let since_stall = stalled_at.elapsed();
    let since_fix = fixed_at.elapsed();
    assert_eq!(
        obj.status.as_ref().and_then(|st| st.status.as_deref()),
        Some("Success")
    );
    assert_eq!(
        obj.condition("Stalled").map(|c| c.status.as_str()),
        Some("False")
    );
    assert!(
        since_stall < RECHECK - Duration::from_secs(1),
        "recovered {since_stall:?} after the stall ({since_fix:?} after the fix): the \
         annotation change should wake the resource, not the {RECHECK:?} re-check"
    );
    let keys = keys_for(&s.sts, &s.a);
    assert!(!keys.is_empty(), "{:?}", s.sts.assumed());
    assert!(
        s.sts
            .assumed()
            .iter()
            .all(|(_, _, id, _)| id.as_deref() == Some("team-a-secret")),
        "{:?}",
        s.sts.assumed()
    );
    assert!(
        keys.iter().any(|k| s.sim.calls_signed_by(k) >= 1),
        "A's recovery was not asked with the role: {:?}",
        s.sim.signers()
    );
    s.operator.stop().await;
}

pub async fn short_lived_credentials_are_refreshed(cluster: Arc<TestCluster>) {
    // The SDK's identity cache refreshes 5-10 s before the expiry: with 15 s credentials the
    // first refresh falls 5-10 s after the first call, the next 5-10 s after that.
    let s = setup(cluster, "roles-refresh", role_annotation(ROLE)).await;
    s.sts.allow_role(ROLE, None);
    s.sts.set_lifetime(Duration::from_secs(15));
    s.sim.add_command(
        Command::new(COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(Duration::from_secs(1), Status::InProgress)
                    .step_with(Duration::from_secs(24), Status::Success, "Success", 0)
                    .stdout("long job done\n"),
            ),
        ),
    );
    s.a.create("long", spec(None)).await;
    s.a.wait_status("long", "InProgress").await;
    let obj = s.a.wait_condition("long", "Ready", "True").await;
    let status = obj.status.expect("status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert_eq!(status.response_code, Some(0));
    assert_eq!(
        status.standard_output_content.as_deref(),
        Some("long job done\n")
    );

    let keys = keys_for(&s.sts, &s.a);
    let used: Vec<&String> = keys
        .iter()
        .filter(|k| s.sim.calls_signed_by(k) >= 1)
        .collect();
    assert!(
        used.len() >= 2,
        "the role's credentials were not refreshed during a 24 s command: keys issued \
         {keys:?}, SSM signers {:?}",
        s.sim.signers()
    );
    assert!(
        s.sim.signers().iter().all(|k| keys.contains(k)),
        "every call of A was signed with the role: {:?}",
        s.sim.signers()
    );
    assert!(s.sts.refused().is_empty(), "{:?}", s.sts.refused());
    s.operator.stop().await;
}
