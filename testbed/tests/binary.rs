//! The `testbed` binary as `make demo` uses it: ready line, working kubeconfig, clean
//! shutdown on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Pids of processes whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The cluster's temporary directory: the parent of the `certs/` the kubeconfig trusts.
fn cluster_dir(kubeconfig: &Path) -> PathBuf {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let ca = config.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .certificate_authority
        .clone()
        .unwrap();
    Path::new(&ca)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test]
async fn binary_announces_kubeconfig_and_stops_on_sigterm() {
    let assets = PathBuf::from(
        std::env::var_os("KUBEBUILDER_ASSETS")
            .expect("KUBEBUILDER_ASSETS (hack/envtest-assets.sh)"),
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("demo");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("no ready line within 120 s")
        .unwrap()
        .expect("testbed exited without a ready line");
    println!(
        "testbed binary ready after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let kubeconfig = dir.join("kubeconfig");
    assert_eq!(
        line,
        format!("testbed ready: KUBECONFIG={}", kubeconfig.display())
    );

    let output = Command::new(assets.join("kubectl"))
        .args(["get", "ns", "kube-system", "-o", "name"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "namespace/kube-system",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let cluster_dir = cluster_dir(&kubeconfig);
    let children = pids_mentioning(&cluster_dir.to_string_lossy());
    assert_eq!(children.len(), 2, "etcd and kube-apiserver: {children:?}");

    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("testbed did not stop within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        lines.next_line().await.unwrap(),
        None,
        "more stdout after the ready line"
    );
    for pid in children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} outlived testbed"
        );
    }
    assert!(
        !cluster_dir.exists(),
        "{} was not removed",
        cluster_dir.display()
    );
}
