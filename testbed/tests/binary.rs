//! The `testbed` binary as `make demo` uses it: ready line, working kubeconfig, clean
//! shutdown on SIGTERM; and its children die with it even when it is SIGKILLed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of live processes whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) && alive(pid) {
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

/// A running `testbed --dir DIR` that has printed its ready line.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    kubeconfig: PathBuf,
    /// etcd, kube-apiserver and kube-controller-manager.
    children: Vec<u32>,
    cluster_dir: PathBuf,
}

async fn start_binary(dir: &Path) -> Running {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), stdout.next_line())
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
    let cluster_dir = cluster_dir(&kubeconfig);
    let children = pids_mentioning(&cluster_dir.to_string_lossy());
    // kube-controller-manager too when the assets have it (hack/envtest-assets.sh builds it).
    let with_controller_manager = std::env::var_os("KUBEBUILDER_ASSETS")
        .is_some_and(|dir| Path::new(&dir).join("kube-controller-manager").is_file());
    assert_eq!(
        children.len(),
        2 + usize::from(with_controller_manager),
        "etcd, kube-apiserver (and kube-controller-manager): {children:?}"
    );
    Running {
        child,
        stdout,
        kubeconfig,
        children,
        cluster_dir,
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on our own child with a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test]
async fn binary_announces_kubeconfig_and_stops_on_sigterm() {
    let assets = PathBuf::from(
        std::env::var_os("KUBEBUILDER_ASSETS")
            .expect("KUBEBUILDER_ASSETS (hack/envtest-assets.sh)"),
    );
    let out = tempfile::tempdir().unwrap();
    let mut running = start_binary(&out.path().join("demo")).await;

    let output = Command::new(assets.join("kubectl"))
        .args(["get", "ns", "kube-system", "-o", "name"])
        .env("KUBECONFIG", &running.kubeconfig)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "namespace/kube-system",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    signal(&running.child, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), running.child.wait())
        .await
        .expect("testbed did not stop within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        running.stdout.next_line().await.unwrap(),
        None,
        "more stdout after the ready line"
    );
    for pid in running.children {
        assert!(!alive(pid), "{pid} outlived testbed");
    }
    assert!(
        !running.cluster_dir.exists(),
        "{} was not removed",
        running.cluster_dir.display()
    );
}

#[tokio::test]
async fn children_die_when_testbed_is_killed() {
    let out = tempfile::tempdir().unwrap();
    let mut running = start_binary(&out.path().join("demo")).await;

    // No drop runs: only the parent-death signal can stop etcd and kube-apiserver.
    signal(&running.child, libc::SIGKILL);
    running.child.wait().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.children.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "children {:?} outlived a SIGKILLed testbed",
            running.children
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The directory is left behind in this case; clean it up.
    std::fs::remove_dir_all(&running.cluster_dir).unwrap();
}
