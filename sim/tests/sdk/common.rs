//! Shared helpers: SDK clients pinned to a simulator, raw requests, the `ssm-sim` binary,
//! polling with a deadline.

use std::ffi::OsStr;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command as Process, Stdio};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::timeout::TimeoutConfig;
use aws_sdk_ssm::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, SharedCredentialsProvider,
};
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::operation::get_command_invocation::builders::GetCommandInvocationFluentBuilder;
use aws_sdk_ssm::Client;
use ssm_sim::{Command, Invocation, Simulator, SqsSimulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The access key id of [`client`]'s static credentials.
const TEST_AKID: &str = "AKIDSSMSIMTEST";

/// An SDK configuration for a simulator at `endpoint`: region `eu-west-1`, `credentials`,
/// `retry`, and `timeout` for a whole operation.
pub fn sdk_config(
    endpoint: &str,
    credentials: impl ProvideCredentials + 'static,
    retry: RetryConfig,
    timeout: Duration,
) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .endpoint_url(endpoint)
        .retry_config(retry)
        .timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build())
        .build()
}

/// Static test credentials with access key id `akid`.
fn static_keys(akid: &str, secret: &str) -> Credentials {
    Credentials::new(akid, secret, None, None, "ssm-sim-tests")
}

/// A client for `sim` with static test credentials, a pinned region and no retries.
pub fn client(sim: &Simulator) -> Client {
    client_with_retries(sim, RetryConfig::disabled())
}

/// A client for `sim` with the given retry policy.
pub fn client_with_retries(sim: &Simulator, retry: RetryConfig) -> Client {
    client_at(&sim.endpoint(), retry)
}

/// A client for the SSM simulator at `endpoint` (e.g. the binary's) with static test
/// credentials ([`TEST_AKID`]) and the given retry policy.
pub fn client_at(endpoint: &str, retry: RetryConfig) -> Client {
    let keys = static_keys(TEST_AKID, "ssm-sim-test-secret");
    Client::new(&sdk_config(endpoint, keys, retry, Duration::from_secs(10)))
}

/// An SQS client for `sqs` with static test credentials and no retries; an operation may
/// take 30 s, longer than SQS's longest long poll.
pub fn sqs_client(sqs: &SqsSimulator) -> aws_sdk_sqs::Client {
    let keys = static_keys("AKIDSQSSIMTEST", "sqs-sim-test-secret");
    let config = sdk_config(
        &sqs.endpoint(),
        keys,
        RetryConfig::disabled(),
        Duration::from_secs(30),
    );
    aws_sdk_sqs::Client::new(&config)
}

/// One raw HTTP request over a fresh connection: `POST /` to `addr` with this
/// `X-Amz-Target`, `Content-Type` and body. The whole answer, head and body, as text.
pub async fn raw_post(addr: SocketAddr, content_type: &str, target: &str, body: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: {target}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s")
}

/// The `ssm-sim` binary, started with `args` (stderr discarded): the child, the endpoint its
/// first stdout line announces, and the rest of its stdout.
pub async fn spawn_binary(
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> (Child, String, BufReader<ChildStdout>) {
    let mut child = Process::new(env!("CARGO_BIN_EXE_ssm-sim"))
        .args(args)
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
    let (line, stdout) = tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .expect("the listening line")
        .unwrap();
    let endpoint = line
        .strip_prefix("ssm-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim_end()
        .to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{line}");
    (child, endpoint, stdout)
}

/// Sends SIGTERM to `child`.
pub fn terminate(child: &Child) {
    let killed = Process::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// A simulator serving one command, `command_id`, with one invocation on `i-1` (SendCommand's
/// default timeline).
pub async fn simulator_with(command_id: &str) -> Simulator {
    let sim = Simulator::start().await.unwrap();
    sim.add_command(Command::new(command_id).invocation(Invocation::new("i-1")));
    sim
}

/// GetCommandInvocation of `command_id` on `instance_id`, ready to send.
pub fn get_invocation(
    ssm: &Client,
    command_id: &str,
    instance_id: &str,
) -> GetCommandInvocationFluentBuilder {
    ssm.get_command_invocation()
        .command_id(command_id)
        .instance_id(instance_id)
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
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
