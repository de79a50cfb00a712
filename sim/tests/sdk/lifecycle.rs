//! Starting and stopping: shutdown, dropping the last handle, and the `ssm-sim` binary.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use aws_sdk_ssm::types::CommandInvocationStatus;
use ssm_sim::Simulator;
use tokio::net::TcpStream;

use crate::common::{client, eventually};

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
    let mut child = Process::new(env!("CARGO_BIN_EXE_ssm-sim"))
        .args(["--bind", "127.0.0.1:0", "--latency", "5ms", "--scenario"])
        .arg(&scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line, stdout)
    });
    let (line, mut stdout) = tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .expect("the listening line")
        .unwrap();
    let endpoint = line
        .strip_prefix("ssm-sim listening on ")
        .expect("the listening line")
        .trim_end()
        .to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{line}");

    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "AKIDSSMSIMTEST",
            "secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .build();
    let ssm = aws_sdk_ssm::Client::from_conf(config);
    let out = ssm
        .get_command_invocation()
        .command_id("from-file")
        .instance_id("i-1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(out.standard_output_content(), Some("ok\n"));

    let killed = Process::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
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
