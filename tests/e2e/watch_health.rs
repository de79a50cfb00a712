//! A watch that cannot work is never silent: with RBAC that lacks `list`/`watch` on
//! CommandInvocations, the operator keeps running, logs the 403 at warn, counts it, and
//! answers `/readyz` with 503; once an admin grants the verbs it becomes ready again without a
//! restart and tracks the resources it could not see.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::Api;
use ssm_sim::{Command, Invocation, Plugin, Simulator};
use testbed::TestCluster;

use crate::support::{poll_until, spec, Operator, OperatorOptions, World, COMMAND_ID, INSTANCE_ID};

/// The HTTP status code of `GET url` (0 when nothing answers).
async fn http_code(url: &str) -> u16 {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .await
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn rule(group: &str, resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// The operator's Role in the world's namespace, reading CommandInvocations with `read`.
fn role(namespace: &str, read: &[&str]) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some("restricted-operator".into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            rule("ssm.operator.dev", "commandinvocations", read),
            rule("ssm.operator.dev", "commandinvocations/status", &["patch"]),
            rule("events.k8s.io", "events", &["create", "patch"]),
        ]),
    }
}

async fn apply<K>(api: &Api<K>, name: &str, object: &K)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

pub async fn missing_rbac_is_reported_and_recovers_when_granted(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "watch_health_rbac").await;
    let ns = world.namespace.clone();
    let user = format!("system:serviceaccount:{ns}:restricted");
    let roles: Api<Role> = Api::namespaced(world.client.clone(), &ns);
    let mut role_yaml = role(&ns, &["get"]);
    role_yaml.metadata.name = Some("restricted-operator".into());
    apply(&roles, "restricted-operator", &role_yaml).await;
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("restricted-operator".into()),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "restricted-operator".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.clone(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        }]),
    };
    apply(
        &Api::<RoleBinding>::namespaced(world.client.clone(), &ns),
        "restricted-operator",
        &binding,
    )
    .await;

    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(
        Command::new(COMMAND_ID).invocation(Invocation::new(INSTANCE_ID).plugin(
            Plugin::succeeding("aws:runShellScript", Duration::from_millis(400)).stdout("ok\n"),
        )),
    );
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            env: vec![("KUBE_RS_DEBUG_IMPERSONATE_USER".into(), user.clone())],
            ..OperatorOptions::default()
        },
    );
    let readyz = format!("{}/readyz", operator.http);

    // The watch is forbidden: counted, logged at warn, /readyz 503; the process keeps running.
    operator
        .metrics_containing("ssm_operator_watch_errors_total")
        .await;
    poll_until("watch errors to be counted", || async {
        let text = operator.metrics().await;
        text.lines()
            .find(|l| l.starts_with("ssm_operator_watch_errors_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .filter(|n| *n >= 1)
    })
    .await;
    assert_eq!(
        http_code(&readyz).await,
        503,
        "not ready while the watch is forbidden"
    );
    let log = operator.log();
    assert!(
        log.contains("WARN") && log.contains("watching CommandInvocations failed"),
        "the 403 is logged at warn:\n{}",
        operator.log_tail()
    );

    // A resource created meanwhile is tracked once the admin grants list and watch.
    world.create("seen-after-grant", spec(None)).await;
    apply(
        &roles,
        "restricted-operator",
        &role(&ns, &["get", "list", "watch"]),
    )
    .await;
    poll_until("/readyz to answer 200 after the grant", || async {
        (http_code(&readyz).await == 200).then_some(())
    })
    .await;
    let obj = world
        .wait_condition("seen-after-grant", "Ready", "True")
        .await;
    assert_eq!(
        obj.status.and_then(|s| s.standard_output_content),
        Some("ok\n".into())
    );
    // Commands were never granted: that controller's cache never syncs. It must not hold
    // up a shutdown (it used to, for the whole 10 s grace).
    let stopping = std::time::Instant::now();
    operator.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?} with the Command watch forbidden",
        stopping.elapsed()
    );
}
