//! Cross-account access (`--namespace-roles`): a Namespace's `ssm.operator.dev/role-arn`
//! makes the operator ask SSM as that role, assumed through the project's own STS simulator
//! (moto's STS grants every role and always for an hour, so it can neither refuse a role nor
//! make credentials expire during a scenario, nor fail for a while). The operator watches two
//! namespaces: A, with the annotation, and B, without it (the operator's own identity, access
//! key `test`) until a scenario annotates it. The SSM simulator refuses requests signed with an
//! expired key of this STS (`ExpiredTokenException`), as AWS does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use ssm_operator::api::CommandInvocationSpec;
use ssm_sim::{Command, Fault, Invocation, Plugin, Simulator, Status, StsSimulator};
use testbed::TestCluster;

use crate::history::{History, Seen};
use crate::support::{poll_until, spec, Operator, OperatorOptions, World, COMMAND_ID, INSTANCE_ID};

const PLUGIN: &str = "aws:runShellScript";
const ROLE: &str = "arn:aws:iam::111122223333:role/ssm-reader";
/// A second role, for a namespace switching from one role to another.
const ROLE_2: &str = "arn:aws:iam::777788889999:role/ssm-auditor";
const REFUSED_ROLE: &str = "arn:aws:iam::444455556666:role/ssm-untrusted";
/// The operator's own access key (support.rs sets `AWS_ACCESS_KEY_ID=test`).
const OWN_KEY: &str = "test";
/// STS's words for a refused role (what the operator must pass on).
const STS_REFUSAL: &str = "is not authorized to perform: sts:AssumeRole on resource: ";
/// `10 × --poll-interval-max` (1 s in support.rs): how often a stalled role is re-checked.
const RECHECK: Duration = Duration::from_secs(10);
/// Commands of namespace A besides [`COMMAND_ID`], polled at the same time with A's role.
const A_FLEET: [&str; 2] = [
    "a1a1a1a1-0000-4000-8000-000000000001",
    "a1a1a1a1-0000-4000-8000-000000000002",
];
/// Commands B starts, one after each change of its identity.
const B_STEPS: [&str; 3] = [
    "b2b2b2b2-0000-4000-8000-000000000001",
    "b2b2b2b2-0000-4000-8000-000000000002",
    "b2b2b2b2-0000-4000-8000-000000000003",
];
/// How long the commands of the identity scenario run: long enough that each of B's changes
/// lands while its earlier invocations are still running.
const RUNS_FOR: Duration = Duration::from_secs(8);
/// STS requests answered HTTP 500 in the refresh scenario: with the SDK's 3 attempts per
/// `AssumeRole`, four credential loads fail, enough for three failed SSM calls in a row (two
/// List rounds, then Get) to reach the resource's status.
const STS_OUTAGE: u32 = 12;

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
    sim.trust_sts(&sts);
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

/// Who signs a namespace's SSM calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    /// The operator's own key.
    Own,
    /// This role, assumed for the namespace.
    Role(&'static str),
}

impl Identity {
    /// The annotations that make a namespace use it (`null` removes the role).
    fn annotations(self) -> Value {
        match self {
            Identity::Own => json!({ "ssm.operator.dev/role-arn": null }),
            Identity::Role(arn) => role_annotation(arn),
        }
    }

    /// SSM calls signed as this identity for `world` (the own key: by anyone).
    fn calls(self, s: &Setup, world: &World) -> usize {
        match self {
            Identity::Own => s.sim.calls_signed_by(OWN_KEY),
            Identity::Role(arn) => {
                let session = format!("ssm-operator-{}", world.namespace);
                s.sts
                    .assumed()
                    .iter()
                    .filter(|(role, name, _, _)| role == arn && *name == session)
                    .map(|(_, _, _, key)| s.sim.calls_signed_by(key))
                    .sum()
            }
        }
    }
}

fn succeeding(after: Duration) -> Command {
    Command::new(COMMAND_ID).invocation(
        Invocation::new(INSTANCE_ID).plugin(Plugin::succeeding(PLUGIN, after).stdout("patched\n")),
    )
}

/// `command_id` on the test instance: InProgress after 0.5 s, Success ("patched") after `ends`.
fn running(command_id: &str, ends: Duration) -> Command {
    Command::new(command_id).invocation(
        Invocation::new(INSTANCE_ID).plugin(
            Plugin::new(PLUGIN)
                .step(Duration::from_millis(500), Status::InProgress)
                .step(ends, Status::Success)
                .stdout("patched\n"),
        ),
    )
}

fn spec_for(command_id: &str) -> CommandInvocationSpec {
    CommandInvocationSpec {
        ttl_seconds_after_finished: None,
        command_id: command_id.into(),
        ..spec(None)
    }
}

/// Waits until `name` reports Success with Ready=True and its output.
async fn ends_right(world: &World, name: &str) {
    let obj = world.wait_condition(name, "Ready", "True").await;
    let status = obj.status.expect("status");
    assert_eq!(
        (
            status.status.as_deref(),
            status.standard_output_content.as_deref()
        ),
        (Some("Success"), Some("patched\n")),
        "{}/{name}",
        world.namespace
    );
}

pub async fn each_namespace_is_asked_with_its_own_identity(cluster: Arc<TestCluster>) {
    let s = setup(cluster, "roles-own", role_annotation(ROLE)).await;
    s.sts.allow_role(ROLE, None);
    s.sts.allow_role(ROLE_2, None);
    // A polls three commands at once with its role; B starts with the operator's own identity
    // on the same command and instance as A: only the identity tells the two apart.
    s.sim.add_command(running(COMMAND_ID, RUNS_FOR));
    for id in A_FLEET {
        s.sim.add_command(running(id, RUNS_FOR));
    }
    s.a.create("patch", spec(None)).await;
    for (n, id) in A_FLEET.iter().enumerate() {
        s.a.create(&format!("fleet-{n}"), spec_for(id)).await;
    }
    s.b.create("patch", spec(None)).await;
    s.b.wait_status("patch", "InProgress").await;
    assert!(s.sim.calls_signed_by(OWN_KEY) >= 1, "{:?}", s.sim.signers());

    // B's annotation changes live: a role, another role, none again. Each change reaches B's
    // running invocations at once (re-keyed, asked again with the new identity); then B starts
    // a new invocation under it. `left` holds each identity B left and its calls by then.
    let mut current = Identity::Own;
    let mut left: Vec<(Identity, usize)> = Vec::new();
    let steps = [
        (Identity::Role(ROLE), "after-role"),
        (Identity::Role(ROLE_2), "after-role-2"),
        (Identity::Own, "after-own"),
    ];
    for ((next, name), command_id) in steps.into_iter().zip(B_STEPS) {
        let before = next.calls(&s, &s.b);
        if next == Identity::Own {
            // B's own-key calls all came before it took a role.
            assert_eq!(
                (Identity::Own, before),
                left[0],
                "SSM calls with the operator's own key while B had a role: {:?}",
                s.sim.signers()
            );
        }
        annotate(&s.b, next.annotations()).await;
        poll_until(&format!("B's first SSM call as {next:?}"), || {
            let now = next.calls(&s, &s.b);
            async move { (now > before).then_some(()) }
        })
        .await;
        left.push((current, current.calls(&s, &s.b)));
        current = next;
        s.sim.add_command(running(command_id, RUNS_FOR));
        s.b.create(name, spec_for(command_id)).await;
        s.b.wait_status(name, "InProgress").await;
    }

    // Every invocation ends right, in both namespaces, whatever identity asked last.
    for name in ["patch", "fleet-0", "fleet-1"] {
        ends_right(&s.a, name).await;
    }
    for name in ["patch", "after-role", "after-role-2", "after-own"] {
        ends_right(&s.b, name).await;
    }

    // No call as an identity B had left (its running invocations switched with it).
    for (identity, calls) in &left[1..] {
        assert_eq!(
            identity.calls(&s, &s.b),
            *calls,
            "B was asked as {identity:?} after leaving it; signers {:?}",
            s.sim.signers()
        );
    }
    assert!(
        Identity::Own.calls(&s, &s.b) > left[0].1,
        "B was not asked with the own key again after the role was removed"
    );
    // One grant per role B used, in its own session (ROLE also serves A, in A's session).
    let b_session = format!("ssm-operator-{}", s.b.namespace);
    let b_grants: Vec<&str> = s
        .sts
        .assumed()
        .iter()
        .filter(|(_, session, _, _)| *session == b_session)
        .map(|(role, _, _, _)| if role == ROLE { "ROLE" } else { "ROLE_2" })
        .collect();
    assert_eq!(b_grants, ["ROLE", "ROLE_2"], "{:?}", s.sts.assumed());

    // A: its role was assumed once (cached) for all its many calls, only in A's session.
    let a_keys = keys_for(&s.sts, &s.a);
    let a_calls: usize = a_keys.iter().map(|k| s.sim.calls_signed_by(k)).sum();
    println!(
        "namespace A: {} AssumeRole calls for {ROLE}, {a_calls} SSM calls signed by it",
        a_keys.len()
    );
    assert!(
        (1..=2).contains(&a_keys.len()),
        "AssumeRole not cached: {} grants for {a_calls} SSM calls",
        a_keys.len()
    );
    assert!(
        a_calls >= 10,
        "{a_calls} SSM calls as A's role: too few to show caching"
    );
    assert!(a_keys.iter().all(|k| k.starts_with("ASIA")), "{a_keys:?}");

    // Every SSM call was signed by the own key or a key issued for A or B; none was shared,
    // refused or expired.
    let all_keys: BTreeSet<String> = s.sts.assumed().into_iter().map(|a| a.3).collect();
    let signers = s.sim.signers();
    assert!(
        signers.iter().all(|k| k == OWN_KEY || all_keys.contains(k)),
        "unexpected signers {signers:?} (issued {all_keys:?})"
    );
    let by_roles: usize = all_keys.iter().map(|k| s.sim.calls_signed_by(k)).sum();
    assert_eq!(
        by_roles + s.sim.calls_signed_by(OWN_KEY),
        usize::try_from(s.sim.total_calls()).unwrap(),
        "every SSM call was signed by a known identity"
    );
    assert!(s.sts.refused().is_empty(), "{:?}", s.sts.refused());
    assert_eq!(s.sim.expired_token_refusals(), 0);
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
        stalled.message.contains("(STS: AccessDenied: User: ")
            && stalled
                .message
                .contains(&format!("{STS_REFUSAL}{REFUSED_ROLE}")),
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
    // first refresh falls 5-10 s after the first call. STS is down when it comes (HTTP 500 for
    // a while): the resource says SsmUnavailable, retries with backoff and never stalls; then
    // fresh keys. The SSM simulator refuses any request signed with an expired key.
    let s = setup(cluster, "roles-refresh", role_annotation(ROLE)).await;
    s.sts.allow_role(ROLE, None);
    s.sts.set_lifetime(Duration::from_secs(15));
    let history = History::start(&s.a).await;
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
    // The first key is in use: from now on STS answers 500 to the next requests, which the
    // first refresh will make.
    assert_eq!(keys_for(&s.sts, &s.a).len(), 1, "{:?}", s.sts.assumed());
    let before_outage = s.sts.calls();
    s.sts.inject(Fault::ServerError { count: STS_OUTAGE });
    let obj = s.a.wait_condition("long", "Ready", "True").await;
    let status = obj.status.expect("status");
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert_eq!(status.response_code, Some(0));
    assert_eq!(
        status.standard_output_content.as_deref(),
        Some("long job done\n")
    );
    let sts_calls = s.sts.calls();
    assert!(
        sts_calls > before_outage + u64::from(STS_OUTAGE),
        "the STS outage was not served: {sts_calls} STS requests, {before_outage} before it"
    );

    // What the user saw: SsmUnavailable (naming STS) while STS was down, never Stalled.
    let versions = history.of("long");
    let lines: Vec<String> = versions.iter().map(Seen::line).collect();
    assert!(
        versions.iter().all(|v| !v.has("Stalled", "True")),
        "Stalled during an STS outage: {lines:#?}"
    );
    let unavailable: Vec<&str> = versions
        .iter()
        .flat_map(|v| &v.conditions)
        .filter(|c| c.type_ == "Reconciling" && c.status == "True" && c.reason == "SsmUnavailable")
        .map(|c| c.message.as_str())
        .collect();
    assert!(
        unavailable
            .iter()
            .any(|m| m.contains("from STS: InternalFailure")),
        "the outage never showed as SsmUnavailable naming STS: {lines:#?} {unavailable:#?}"
    );

    // Refreshed before expiry: two keys or more signed A's calls, and not one SSM request was
    // refused as signed with an expired key.
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
    println!(
        "refresh: {} keys used, {} STS requests ({STS_OUTAGE} answered 500), {} status \
         versions said SsmUnavailable, e.g. {:?}; {} SSM requests refused as expired",
        used.len(),
        sts_calls,
        unavailable.len(),
        unavailable.first(),
        s.sim.expired_token_refusals()
    );
    assert_eq!(
        s.sim.expired_token_refusals(),
        0,
        "SSM requests signed with an expired key: the credentials were not refreshed in time"
    );
    assert!(
        s.sim.signers().iter().all(|k| keys.contains(k)),
        "every call of A was signed with the role: {:?}",
        s.sim.signers()
    );
    assert!(s.sts.refused().is_empty(), "{:?}", s.sts.refused());
    s.operator.stop().await;
}
