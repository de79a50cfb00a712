//! Shared helpers: an SDK client pinned to a simulator, polling with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::timeout::TimeoutConfig;
use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::Client;
use ssm_sim::Simulator;

/// A client for `sim` with static test credentials, a pinned region and no retries.
pub fn client(sim: &Simulator) -> Client {
    client_with_retries(sim, RetryConfig::disabled())
}

/// A client for `sim` with the given retry policy.
pub fn client_with_retries(sim: &Simulator, retry: RetryConfig) -> Client {
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new(
            "AKIDSSMSIMTEST",
            "ssm-sim-test-secret",
            None,
            None,
            "ssm-sim-tests",
        ))
        .endpoint_url(sim.endpoint())
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

/// Standard retries with a tiny back-off, to watch retries without waiting.
pub fn fast_retries(max_attempts: u32) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(max_attempts)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(5))
}

/// Polls `probe` until it yields a value, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The error code of an SDK error, e.g. `Some("InvocationDoesNotExist")`.
pub fn code<E: ProvideErrorMetadata>(err: &E) -> Option<String> {
    err.code().map(str::to_string)
}

/// Asserts `text` looks like `2026-11-25T03:50:00.123Z`.
pub fn assert_iso_instant(text: &str) {
    let bytes = text.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    assert_eq!(bytes.len(), 24, "{text}");
    assert!(digits.iter().all(|&i| bytes[i].is_ascii_digit()), "{text}");
    assert_eq!(
        (bytes[4], bytes[7], bytes[10], bytes[13], bytes[16], bytes[19], bytes[23]),
        (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{text}"
    );
}
