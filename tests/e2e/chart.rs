//! The Helm chart against a real API server: what `helm template` renders is accepted by the
//! server (`kubectl apply --dry-run=server`), and `helm install`, `upgrade` and `uninstall`
//! create, change and remove the objects users expect. The operator binary then runs with
//! exactly the RBAC the chart grants (impersonating the chart's ServiceAccount).
//!
//! `hack/check-chart.sh` already lints and renders the chart offline and asserts on the
//! rendered text; these scenarios add what only a server can say: admission, RBAC, and the
//! release's life cycle.
//!
//! There is no kubelet, so the Deployment never gets ready pods: nothing here waits for them
//! (no `--wait`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::Value;
use ssm_sim::{Command, Invocation, Plugin, Simulator};
use testbed::TestCluster;
use tokio::io::AsyncWriteExt;

use crate::support::{spec, Operator, OperatorOptions, World, COMMAND_ID, DEADLINE, INSTANCE_ID};

/// The chart's name; objects are called `<release>-ssm-operator`.
const CHART_NAME: &str = "ssm-operator";
/// The CRD the harness installed from `crds/commandinvocation.yaml`.
const CRD: &str = "customresourcedefinition/commandinvocations.ssm.operator.dev";

fn chart_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("charts")
        .join(CHART_NAME)
        .to_string_lossy()
        .into_owned()
}

/// Runs a command to completion (killed at the deadline) and returns stdout; panics with the
/// command's stderr if it fails.
async fn run(mut command: tokio::process::Command, what: &str, stdin: Option<&str>) -> String {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn helm(world: &World, args: &[&str]) -> String {
    let mut command = world.cluster.helm();
    command.args(args);
    run(command, &format!("helm {args:?}"), None).await
}

/// Kubernetes objects in a multi-document YAML stream, as kubectl names them in its output
/// (`deployment.apps/NAME`, `serviceaccount/NAME`).
fn object_names(manifest: &str) -> Vec<String> {
    serde_yaml_ng::Deserializer::from_str(manifest)
        .filter_map(|doc| {
            let value: Option<Value> = serde::Deserialize::deserialize(doc).expect("YAML");
            value.filter(|v| !v.is_null())
        })
        .map(|doc| {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default().to_lowercase();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            match api_version.split_once('/') {
                Some((group, _)) => format!("{kind}.{group}/{name}"),
                None => format!("{kind}/{name}"),
            }
        })
        .collect()
}

/// The value of environment variable `name` of the Deployment's operator container.
fn container_env<'a>(deployment: &'a Value, name: &str) -> Option<&'a str> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

pub async fn helm_template_applies_with_server_side_dry_run(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "chart-template").await;
    let ns = world.namespace.as_str();
    let release = "template";
    // `helm template` never asks the cluster, so it renders for the API version it is told;
    // without this it assumes a recent Kubernetes and renders e.g. policy/v1 PDBs that this
    // 1.20 server does not serve. Render for the server the objects are checked against.
    let server = world
        .client
        .apiserver_version()
        .await
        .expect("server version");
    let chart = chart_dir();
    let watched = format!("watchNamespaces={{{ns}}}");
    let value_sets: [(&str, Vec<&str>); 2] = [
        ("defaults", vec![]),
        (
            // Namespaced RBAC for the world's namespace, plus the one capability-dependent
            // template (the PodDisruptionBudget's API version).
            "watchNamespaces + PDB",
            vec![
                "--set",
                &watched,
                "--set",
                "podDisruptionBudget.enabled=true",
            ],
        ),
    ];
    for (label, values) in value_sets {
        let mut args = vec![
            "template",
            release,
            &chart,
            "--namespace",
            ns,
            "--kube-version",
            &server.git_version,
        ];
        args.extend(values.iter().copied());
        let manifest = helm(&world, &args).await;
        let objects = object_names(&manifest);
        // CRDs: `helm template` leaves the chart's crds/ out unless --include-crds. That is
        // what is wanted here: the harness installed the same CRD file (check-chart.sh
        // asserts the chart's copy is identical), and the CRD is cluster-scoped and shared by
        // every scenario, so this scenario checks the chart's templates only.
        assert!(
            !objects
                .iter()
                .any(|o| o.starts_with("customresourcedefinition")),
            "{label}: helm template rendered a CRD without --include-crds: {objects:?}"
        );
        assert!(
            objects.iter().any(|o| o.starts_with("deployment.apps/")),
            "{label}: no Deployment rendered: {objects:?}"
        );

        let mut kubectl = world.cluster.kubectl();
        kubectl.args(["apply", "--dry-run=server", "-f", "-"]);
        let applied = run(
            kubectl,
            &format!("kubectl apply --dry-run=server ({label})"),
            Some(&manifest),
        )
        .await;
        for object in &objects {
            assert!(
                applied
                    .lines()
                    .any(|l| l == format!("{object} created (server dry run)")),
                "{label}: the server did not accept {object}; kubectl said:\n{applied}"
            );
        }
        assert_eq!(
            applied.lines().count(),
            objects.len(),
            "{label}: kubectl applied other objects than rendered ({objects:?}):\n{applied}"
        );
    }
    // A dry run leaves nothing behind.
    let left = world
        .kubectl(&["get", "deployments,serviceaccounts,roles", "-o", "name"])
        .await;
    assert_eq!(left.trim(), "", "the dry run created objects");
}

/// One release's objects as `kubectl get` names them (`kind/name`, with the namespace flag
/// for namespaced ones).
struct ReleaseObjects {
    namespaced: Vec<String>,
    cluster_wide: Vec<String>,
}

impl ReleaseObjects {
    fn of(fullname: &str) -> ReleaseObjects {
        ReleaseObjects {
            namespaced: vec![
                format!("deployment.apps/{fullname}"),
                format!("serviceaccount/{fullname}"),
                format!("service/{fullname}-metrics"),
                format!("role.rbac.authorization.k8s.io/{fullname}-leader-election"),
                format!("rolebinding.rbac.authorization.k8s.io/{fullname}-leader-election"),
            ],
            cluster_wide: vec![
                format!("clusterrole.rbac.authorization.k8s.io/{fullname}"),
                format!("clusterrolebinding.rbac.authorization.k8s.io/{fullname}"),
            ],
        }
    }

    /// The objects that exist, as `kubectl get -o name` prints them.
    async fn existing(&self, world: &World) -> Vec<String> {
        let mut found = Vec::new();
        for (objects, namespaced) in [(&self.namespaced, true), (&self.cluster_wide, false)] {
            let mut args: Vec<&str> = vec!["get", "--ignore-not-found", "-o", "name"];
            args.extend(objects.iter().map(String::as_str));
            let out = if namespaced {
                world.kubectl(&args).await
            } else {
                let mut kubectl = world.cluster.kubectl();
                kubectl.args(&args);
                run(kubectl, &format!("kubectl {args:?}"), None).await
            };
            found.extend(out.lines().map(str::to_string));
        }
        found.sort();
        found
    }

    fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .namespaced
            .iter()
            .chain(&self.cluster_wide)
            .cloned()
            .collect();
        all.sort();
        all
    }
}

async fn release_status(world: &World, release: &str) -> Option<(String, String)> {
    let list: Value = serde_json::from_str(
        &helm(
            world,
            &["list", "--namespace", &world.namespace, "-o", "json"],
        )
        .await,
    )
    .expect("helm list json");
    list.as_array()?
        .iter()
        .find(|r| r["name"] == release)
        .map(|r| {
            (
                r["status"].as_str().unwrap_or_default().to_string(),
                r["revision"].as_str().unwrap_or_default().to_string(),
            )
        })
}

async fn deployment(world: &World, name: &str) -> Value {
    serde_json::from_str(
        &world
            .kubectl(&["get", "deployment", name, "-o", "json"])
            .await,
    )
    .expect("deployment json")
}

async fn crd_generation(world: &World) -> i64 {
    let mut kubectl = world.cluster.kubectl();
    kubectl.args(["get", CRD, "-o", "jsonpath={.metadata.generation}"]);
    run(kubectl, "kubectl get crd", None)
        .await
        .trim()
        .parse()
        .expect("CRD generation")
}

pub async fn helm_install_upgrade_uninstall(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "chart-install").await;
    let ns = world.namespace.clone();
    // The namespace is unique on this cluster, so the release (and with it the names of the
    // ClusterRole and ClusterRoleBinding) is too.
    let release = ns.clone();
    assert!(
        release.len() <= 53,
        "release name {release} too long for Helm"
    );
    let fullname = format!("{release}-{CHART_NAME}");
    let chart = chart_dir();
    let objects = ReleaseObjects::of(&fullname);
    let crd_before = crd_generation(&world).await;

    // Install with the chart's defaults. Without --skip-crds: Helm 4
    // server-side applies the chart's crds/ even when the CRD exists; that is a no-op here
    // because the chart carries the very file the harness installed.
    helm(&world, &["install", &release, &chart, "--namespace", &ns]).await;
    assert_eq!(
        release_status(&world, &release).await,
        Some(("deployed".into(), "1".into())),
        "helm list after install"
    );
    assert_eq!(
        objects.existing(&world).await,
        objects.all(),
        "objects after helm install"
    );
    assert_eq!(
        crd_generation(&world).await,
        crd_before,
        "helm install changed the CRD's spec: the chart's crds/ differs from the harness's CRD"
    );
    let deploy = deployment(&world, &fullname).await;
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 2, "default replicas");
    assert_eq!(
        pod["serviceAccountName"],
        fullname.as_str(),
        "the pods run as the chart's ServiceAccount"
    );
    assert_eq!(
        pod["containers"][0]["args"],
        serde_json::json!(["run"]),
        "container args"
    );
    for (env, want) in [
        ("SSM_OPERATOR_LEADER_ELECT", "true"),
        ("SSM_OPERATOR_LEASE_NAME", "ssm-operator"),
        ("SSM_OPERATOR_POLL_INTERVAL_MAX", "30s"),
    ] {
        assert_eq!(
            container_env(&deploy, env),
            Some(want),
            "{env} after install; env: {}",
            pod["containers"][0]["env"]
        );
    }
    let binding: Value = {
        let mut kubectl = world.cluster.kubectl();
        kubectl.args(["get", &objects.cluster_wide[1], "-o", "json"]);
        serde_json::from_str(&run(kubectl, "kubectl get clusterrolebinding", None).await)
            .expect("binding json")
    };
    assert_eq!(
        (
            &binding["subjects"][0]["kind"],
            &binding["subjects"][0]["name"],
            &binding["subjects"][0]["namespace"]
        ),
        (
            &Value::from("ServiceAccount"),
            &Value::from(fullname.as_str()),
            &Value::from(ns.as_str())
        ),
        "ClusterRoleBinding subject"
    );

    // The real operator with exactly the chart's RBAC: impersonate its ServiceAccount (kube's
    // KUBE_RS_DEBUG_IMPERSONATE_* is applied by Config::infer) and use the chart's Lease.
    runs_with_the_charts_rbac(&world, &fullname).await;

    // Upgrade with a changed value: the Deployment's container env follows.
    helm(
        &world,
        &[
            "upgrade",
            &release,
            &chart,
            "--namespace",
            &ns,
            "--set",
            "config.pollIntervalMax=45s",
        ],
    )
    .await;
    assert_eq!(
        release_status(&world, &release).await,
        Some(("deployed".into(), "2".into())),
        "helm list after upgrade"
    );
    let upgraded = deployment(&world, &fullname).await;
    assert_eq!(
        container_env(&upgraded, "SSM_OPERATOR_POLL_INTERVAL_MAX"),
        Some("45s"),
        "SSM_OPERATOR_POLL_INTERVAL_MAX after upgrade; env: {}",
        upgraded["spec"]["template"]["spec"]["containers"][0]["env"]
    );
    assert_eq!(
        container_env(&upgraded, "SSM_OPERATOR_POLL_INTERVAL_MIN"),
        Some("2s"),
        "untouched values keep their defaults after upgrade"
    );
    assert_eq!(
        upgraded["metadata"]["generation"].as_i64(),
        deploy["metadata"]["generation"].as_i64().map(|g| g + 1),
        "the upgrade changed the Deployment's pod template once"
    );

    // Uninstall: every object of the release goes; the CRD (and so everyone's
    // CommandInvocations) stays.
    helm(&world, &["uninstall", &release, "--namespace", &ns]).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = objects.existing(&world).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there {DEADLINE:?} after helm uninstall: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        release_status(&world, &release).await,
        None,
        "helm list after uninstall"
    );
    assert_eq!(
        crd_generation(&world).await,
        crd_before,
        "the CRD after uninstall"
    );
    assert_eq!(
        world.kubectl(&["get", "cinv", "-o", "name"]).await.trim(),
        "commandinvocation.ssm.operator.dev/cinv-by-chart-rbac",
        "uninstall must keep CommandInvocations"
    );
}

/// Runs the operator as the chart's ServiceAccount, electing a leader on the chart's Lease,
/// and checks it takes a CommandInvocation to Ready with Events: the chart's RBAC is enough.
async fn runs_with_the_charts_rbac(world: &World, fullname: &str) {
    let ns = &world.namespace;
    let service_account = format!("system:serviceaccount:{ns}:{fullname}");
    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(
        Command::new(COMMAND_ID).invocation(Invocation::new(INSTANCE_ID).plugin(
            Plugin::succeeding("aws:runShellScript", Duration::from_millis(600)).stdout("ok\n"),
        )),
    );
    let operator = Operator::start(
        world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: [
                "--leader-elect",
                "--lease-namespace",
                ns,
                "--lease-name",
                "ssm-operator",
                "--lease-duration",
                "4s",
            ]
            .map(String::from)
            .to_vec(),
            env: vec![
                (
                    "KUBE_RS_DEBUG_IMPERSONATE_USER".into(),
                    service_account.clone(),
                ),
                (
                    "KUBE_RS_DEBUG_IMPERSONATE_GROUP".into(),
                    format!(
                        "system:serviceaccounts,system:serviceaccounts:{ns},system:authenticated"
                    ),
                ),
            ],
        },
    );
    world.create("cinv-by-chart-rbac", spec(None)).await;
    let obj = world
        .wait_condition("cinv-by-chart-rbac", "Ready", "True")
        .await;
    assert_eq!(
        obj.status.and_then(|s| s.standard_output_content),
        Some("ok\n".into()),
        "status written as the chart's ServiceAccount"
    );
    let reasons = world.event_reasons("cinv-by-chart-rbac").await;
    assert!(
        reasons.iter().any(|r| r == "Success"),
        "Events recorded as the chart's ServiceAccount: {reasons:?}"
    );
    let lease = Api::<Lease>::namespaced(world.client.clone(), ns)
        .get("ssm-operator")
        .await
        .expect("the chart's Lease");
    assert!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_ref())
            .is_some(),
        "the operator holds the chart's Lease: {:?}",
        lease.spec
    );
    let log = operator.log();
    assert!(
        log.contains("impersonating user") && !log.contains("Forbidden"),
        "the operator ran as {service_account} without Forbidden errors; log:\n{}",
        operator.log_tail()
    );
    operator.stop().await;
}
