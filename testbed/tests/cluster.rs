//! End-to-end tests of the library against real etcd + kube-apiserver binaries
//! (`KUBEBUILDER_ASSETS`, see `hack/envtest-assets.sh`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use testbed::{Error, TestCluster, SYSTEM_NAMESPACES};

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn timed_start(label: &str) -> TestCluster {
    let started = Instant::now();
    let cluster = TestCluster::start().await.unwrap_or_else(|e| panic!("{e}"));
    println!(
        "testbed start-up ({label}): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    cluster
}

async fn namespace_names(client: kube::Client) -> Vec<String> {
    Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect()
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "greeting".to_string(),
            "hello".to_string(),
        )])),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn cluster_serves_api_kubectl_helm_and_cleans_up() {
    let cluster = timed_start("single").await;
    let client = cluster.client().await.unwrap();

    let names = namespace_names(client.clone()).await;
    for wanted in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing in {names:?}"
        );
    }
    assert_eq!(SYSTEM_NAMESPACES.len(), 4);

    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    config_maps
        .create(&PostParams::default(), &config_map("testbed-probe"))
        .await
        .unwrap();
    let read = config_maps.get("testbed-probe").await.unwrap();
    assert_eq!(read.data.unwrap()["greeting"], "hello");

    let output = cluster
        .kubectl()
        .args(["get", "ns"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl get ns: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("kube-node-lease"), "{stdout}");

    let output = cluster
        .kubectl()
        .args([
            "get",
            "configmap",
            "testbed-probe",
            "-o",
            "jsonpath={.data.greeting}",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello");

    // helm is part of the assets built by hack/envtest-assets.sh, but optional here.
    match cluster
        .helm()
        .args(["list", "--all-namespaces"])
        .output()
        .await
    {
        Ok(output) => {
            assert!(
                output.status.success(),
                "helm list: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(cluster.log_dir().join("helm").is_dir());
        }
        Err(e) => eprintln!("helm not available, skipped: {e}"),
    }

    assert!(cluster.server_url().starts_with("https://127.0.0.1:"));
    assert!(cluster.kubeconfig_path().is_file());
    assert!(cluster.assets_dir().join("kube-apiserver").is_file());
    let log_dir = cluster.log_dir().to_path_buf();
    assert!(log_dir.join("etcd.log").is_file());
    assert!(log_dir.join("apiserver.log").is_file());

    let mut pids = vec![cluster.apiserver_pid(), cluster.etcd_pid()];
    pids.extend(cluster.controller_manager_pid());
    assert!(pids.iter().all(|&pid| pid_alive(pid)), "{pids:?}");
    drop(client);
    drop(cluster);
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} outlived the cluster");
    }
    if std::env::var_os("TESTBED_KEEP").is_none_or(|v| v != "1") {
        assert!(!log_dir.exists(), "{} was not removed", log_dir.display());
    }
}

#[tokio::test]
async fn two_clusters_run_side_by_side() {
    let (a, b) = tokio::join!(timed_start("parallel a"), timed_start("parallel b"));
    assert_ne!(a.server_url(), b.server_url());
    assert_ne!(a.log_dir(), b.log_dir());

    let (client_a, client_b) = (a.client().await.unwrap(), b.client().await.unwrap());
    Api::<ConfigMap>::namespaced(client_a.clone(), "default")
        .create(&PostParams::default(), &config_map("only-in-a"))
        .await
        .unwrap();
    let in_a = Api::<ConfigMap>::namespaced(client_a, "default")
        .get_opt("only-in-a")
        .await
        .unwrap();
    let in_b = Api::<ConfigMap>::namespaced(client_b.clone(), "default")
        .get_opt("only-in-a")
        .await
        .unwrap();
    assert!(in_a.is_some());
    assert!(in_b.is_none(), "the clusters share state");
    assert!(namespace_names(client_b)
        .await
        .contains(&"kube-system".to_string()));

    let pids = [
        a.apiserver_pid(),
        a.etcd_pid(),
        b.apiserver_pid(),
        b.etcd_pid(),
    ];
    drop(a);
    assert!(pids[2..].iter().all(|&pid| pid_alive(pid)), "b died with a");
    drop(b);
    assert!(pids.iter().all(|&pid| !pid_alive(pid)), "{pids:?}");
}

#[tokio::test]
async fn incomplete_assets_give_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = TestCluster::start_with_assets(empty.path())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AssetsIncomplete { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("hack/envtest-assets.sh"), "{text}");
    assert!(text.contains("kube-apiserver, etcd, kubectl"), "{text}");
}

#[tokio::test]
async fn apiserver_stops_and_starts_again_on_the_same_port_with_its_data() {
    let cluster = timed_start("restart").await;
    let client = cluster.client().await.unwrap();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    config_maps
        .create(&PostParams::default(), &config_map("survives-restart"))
        .await
        .unwrap();
    let (url, first_pid, etcd_pid) = (
        cluster.server_url().to_string(),
        cluster.apiserver_pid(),
        cluster.etcd_pid(),
    );

    cluster.stop_apiserver().await;
    assert_eq!(cluster.apiserver_pid(), 0);
    assert!(
        !pid_alive(first_pid),
        "kube-apiserver {first_pid} still runs"
    );
    assert!(pid_alive(etcd_pid), "etcd went down with kube-apiserver");
    let down = config_maps.get("survives-restart").await;
    assert!(down.is_err(), "a request succeeded while stopped: {down:?}");
    cluster.stop_apiserver().await; // idempotent

    let started = Instant::now();
    cluster
        .start_apiserver()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "testbed apiserver restart: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let second_pid = cluster.apiserver_pid();
    assert!(second_pid != 0 && second_pid != first_pid && pid_alive(second_pid));
    assert_eq!(cluster.server_url(), url);
    cluster.start_apiserver().await.unwrap(); // no-op while it runs
    assert_eq!(cluster.apiserver_pid(), second_pid);

    // The client made before the outage (same kubeconfig, certificate and token) works again,
    // and etcd kept the data.
    let read = config_maps.get("survives-restart").await.unwrap();
    assert_eq!(read.data.unwrap()["greeting"], "hello");
    let log = std::fs::read_to_string(cluster.log_dir().join("apiserver.log")).unwrap();
    assert!(log.contains("--- testbed: starting kube-apiserver again ---"));

    drop(client);
    drop(cluster);
    assert!(!pid_alive(second_pid) && !pid_alive(etcd_pid));
}

/// With kube-controller-manager in the assets (as `hack/envtest-assets.sh` builds them), owner
/// references and namespace deletion work as in a real cluster.
#[tokio::test]
async fn the_garbage_collector_and_the_namespace_controller_run() {
    let cluster = timed_start("controllers").await;
    if !cluster.has_controller_manager() {
        eprintln!("no kube-controller-manager in the assets: skipped");
        return;
    }
    assert!(cluster.log_dir().join("controller-manager.log").is_file());
    let client = cluster.client().await.unwrap();
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("gc".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "gc");
    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner"))
        .await
        .unwrap();
    let mut child = config_map("child");
    child.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            controller: Some(true),
            block_owner_deletion: None,
        },
    ]);
    config_maps
        .create(&PostParams::default(), &child)
        .await
        .unwrap();
    config_maps
        .delete("owner", &kube::api::DeleteParams::background())
        .await
        .unwrap();
    wait_until("the garbage collector deletes the child", || async {
        config_maps.get_opt("child").await.unwrap().is_none()
    })
    .await;
    namespaces
        .delete("gc", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        "the namespace controller finishes the namespace",
        || async { namespaces.get_opt("gc").await.unwrap().is_none() },
    )
    .await;
}

async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
