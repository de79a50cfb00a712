//! `testbed [--dir DIR]`: starts an etcd + kube-apiserver test cluster for `make demo`.
//!
//! Once the cluster is ready it prints exactly one line to stdout,
//! `testbed ready: KUBECONFIG=<path>`, then runs until SIGINT or SIGTERM, tears the cluster
//! down and exits 0. With `--dir`, the kubeconfig is copied to `DIR/kubeconfig` (and that path
//! is printed); it stays there after shutdown but then points at nothing. The binaries come
//! from `KUBEBUILDER_ASSETS`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use testbed::TestCluster;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs a loopback etcd + kube-apiserver (binaries from $KUBEBUILDER_ASSETS) until SIGINT/SIGTERM"
)]
struct Args {
    /// Directory to copy the kubeconfig into (as DIR/kubeconfig); created if missing.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testbed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the cluster, announces it, waits for a signal and tears down.
async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Listen before starting, so that a signal during start-up also ends cleanly: dropping
    // the start future kills whatever was already started.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let cluster = tokio::select! {
        cluster = TestCluster::start() => cluster?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };

    let kubeconfig = match &args.dir {
        Some(dir) => copy_kubeconfig(cluster.kubeconfig_path(), dir)?,
        None => cluster.kubeconfig_path().to_path_buf(),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "testbed ready: KUBECONFIG={}", kubeconfig.display())?;
    stdout.flush()?;
    drop(stdout);

    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    drop(cluster);
    Ok(())
}

/// Copies the kubeconfig to `dir/kubeconfig` and returns that path, made absolute.
fn copy_kubeconfig(from: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let to = std::path::absolute(dir.join("kubeconfig"))?;
    std::fs::copy(from, &to)?;
    Ok(to)
}
