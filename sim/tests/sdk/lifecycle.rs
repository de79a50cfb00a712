//! Starting and stopping: shutdown, dropping the last handle, and the `ssm-sim` binary.

use std::ffi::OsStr;
use std::io::Read;
use std::time::Duration;

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::types::CommandInvocationStatus;
use ssm_sim::Simulator;
use tokio::net::TcpStream;

use crate::common::{client, client_at, eventually, get_invocation, spawn_binary, terminate};

#[tokio::test]
async fn shutdown_releases_the_port() {
    let sim = Simulator::start().await.unwrap();
    let addr = sim.local_addr();
    assert_eq!(sim.endpoint(), format!("http://127.0.0.1:{}", addr.port()));
    // An idle keep-alive connection must not hold shutdown up.
    client(&sim).list_commands().send().await.unwrap();
    sim.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn dropping_the_last_handle_stops_serving() {
    let sim = Simulator::start().await.unwrap();
    let addr = sim.local_addr();
    let other = sim.clone();
    drop(sim);
    assert!(
        TcpStream::connect(addr).await.is_ok(),
        "a clone still serves"
    );
    drop(other);
    eventually("the port to close", Duration::from_secs(3), || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_a_scenario_and_stops_on_sigterm() {
    let scenario = std::env::temp_dir().join(format!("ssm-sim-test-{}.json", std::process::id()));
    std::fs::write(
        &scenario,
        r#"{"commands":[{"command_id":"from-file","invocations":[
            {"instance_id":"i-1","plugins":[{"name":"aws:runShellScript","stdout":"ok\n",
              "steps":[{"after_ms":0,"status":"Success"}]}]}]}]}"#,
    )
    .unwrap();
    let args = ["--bind", "127.0.0.1:0", "--latency", "5ms", "--scenario"].map(OsStr::new);
    let (mut child, endpoint, mut stdout) =
        spawn_binary(args.into_iter().chain([scenario.as_os_str()])).await;

    // The SDK's default retries: standard, three attempts.
    let ssm = client_at(&endpoint, RetryConfig::standard());
    let out = get_invocation(&ssm, "from-file", "i-1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(out.standard_output_content(), Some("ok\n"));

    terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing else on stdout");
    let _ = std::fs::remove_file(scenario);
}
