//! The request-rate limit: a token bucket over all operations, throttling what is above it.

use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use ssm_sim::Fault;

use crate::common::{
    client, client_with_retries, code, get_invocation, raw_post, simulator_with, spawn_binary,
    terminate,
};

const CMD: &str = "4f5a6b7c-8d9e-4fa0-b1c2-d3e4f5a6b7c8";

#[tokio::test]
async fn requests_above_the_rate_are_throttled() {
    let sim = simulator_with(CMD).await;
    let ssm = client(&sim);
    let rate = 4.0;
    sim.set_rate_limit(Some(rate));
    let started = Instant::now();
    let mut ok = 0;
    let mut throttled = 0;
    for n in 0..30 {
        // Any operation draws from the same bucket.
        let result = if n % 2 == 0 {
            get_invocation(&ssm, CMD, "i-1")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| (code(&e), e.message().unwrap_or_default().to_string()))
        } else {
            ssm.list_command_invocations()
                .command_id(CMD)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| (code(&e), e.message().unwrap_or_default().to_string()))
        };
        match result {
            Ok(()) => ok += 1,
            Err((code, message)) => {
                assert_eq!(code.as_deref(), Some("ThrottlingException"));
                assert!(message.contains("Rate exceeded"), "{message}");
                throttled += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The full bucket (burst = rate), plus what refilled meanwhile.
    assert!(ok >= rate as usize, "{ok} served");
    assert!(
        ok as f64 <= rate + rate * elapsed + 1.0,
        "{ok} served in {elapsed:.2} s"
    );
    assert_eq!(sim.throttled(), throttled);
    assert_eq!(ok + throttled as usize, 30);
    // Throttled requests are still calls.
    assert_eq!(
        sim.calls("GetCommandInvocation") + sim.calls("ListCommandInvocations"),
        30
    );
    assert_eq!(sim.total_calls(), 30);

    // The bucket refills at the rate: after a second, about `rate` more are served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = 0;
    for _ in 0..10 {
        if ssm.list_commands().send().await.is_ok() {
            later += 1;
        }
    }
    assert!((3..=6).contains(&later), "{later} served after a second");

    // No limit: everything is served again.
    sim.set_rate_limit(None);
    let before = sim.throttled();
    for _ in 0..20 {
        ssm.list_commands().send().await.unwrap();
    }
    assert_eq!(sim.throttled(), before);
}

#[tokio::test]
async fn throttled_requests_leave_injected_faults_queued() {
    let sim = simulator_with(CMD).await;
    let ssm = client(&sim);
    let get = || get_invocation(&ssm, CMD, "i-1").send();
    sim.set_rate_limit(Some(1.0));
    get().await.unwrap();
    sim.inject(Fault::ServerError { count: 1 });
    // Over the limit: throttled at the door; the 500 waits for an admitted request.
    let err = get().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    sim.set_rate_limit(None);
    let err = get().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InternalServerError"));
    get().await.unwrap();
    // Injected throttles count as throttled too.
    sim.inject(Fault::Throttle { count: 1 });
    let err = get().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    assert_eq!(sim.throttled(), 2);
    assert_eq!(sim.calls("GetCommandInvocation"), 5);
}

#[tokio::test]
async fn sdk_retries_wait_out_a_short_throttle() {
    let sim = simulator_with(CMD).await;
    // Jittered backoffs from 100 ms (about 0.75 s over four retries) against a bucket
    // refilling 5 per second.
    let retrying = client_with_retries(
        &sim,
        RetryConfig::standard()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(1)),
    );
    sim.set_rate_limit(Some(5.0));
    for _ in 0..5 {
        retrying.list_commands().send().await.unwrap();
    }
    // The bucket is empty now; the next call is throttled at least once, then served.
    let mut served = 0;
    for _ in 0..3 {
        if retrying.list_commands().send().await.is_ok() {
            served += 1;
        }
    }
    assert!(served >= 1, "a retry should have found a refilled token");
    assert!(sim.throttled() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_takes_a_rate_limit() {
    let (mut child, endpoint, _stdout) = spawn_binary(["--rate-limit", "1"]).await;
    let addr = endpoint.trim_start_matches("http://").parse().unwrap();
    let post = || {
        raw_post(
            addr,
            "application/x-amz-json-1.1",
            "AmazonSSM.ListCommands",
            "{}",
        )
    };
    let first = post().await;
    let second = post().await;
    terminate(&child);
    let status = child.wait().unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(second.starts_with("HTTP/1.1 400"), "{second}");
    assert!(second.contains("ThrottlingException"), "{second}");
    assert!(status.success(), "{status}");

    // A rate that is not a positive number is refused.
    let refused = Process::new(env!("CARGO_BIN_EXE_ssm-sim"))
        .args(["--rate-limit", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!refused.success());
}
