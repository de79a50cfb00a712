//! Injected faults, latency and call counters.

use std::time::{Duration, Instant};

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::timeout::TimeoutConfig;
use aws_sdk_ssm::error::SdkError;
use aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationError;
use ssm_sim::{Fault, Simulator};

use crate::common::{
    client, client_with_retries, code, fast_retries, get_invocation, raw_post, simulator_with,
};

const CMD: &str = "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7";

#[tokio::test]
async fn throttling_is_consumed_one_request_at_a_time() {
    let sim = simulator_with(CMD).await;
    let ssm = client(&sim);
    let get = || get_invocation(&ssm, CMD, "i-1").send();
    sim.inject(Fault::Throttle { count: 2 });
    for _ in 0..2 {
        let err = get().await.unwrap_err();
        assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    }
    get().await.unwrap();
    assert_eq!(sim.calls("GetCommandInvocation"), 3);

    // The SDK's standard retries ride over it.
    let retrying = client_with_retries(&sim, fast_retries(3));
    sim.inject(Fault::Throttle { count: 2 });
    get_invocation(&retrying, CMD, "i-1").send().await.unwrap();
    assert_eq!(sim.calls("GetCommandInvocation"), 6);

    // Faults hit any operation, and can be cleared.
    sim.inject(Fault::Throttle { count: 1 });
    let err = ssm.list_commands().send().await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    sim.inject(Fault::Throttle { count: 5 });
    sim.clear_faults();
    ssm.list_commands().send().await.unwrap();
}

#[tokio::test]
async fn server_errors_answer_500() {
    let sim = simulator_with(CMD).await;
    let ssm = client(&sim);
    sim.inject(Fault::ServerError { count: 1 });
    let err = get_invocation(&ssm, CMD, "i-1").send().await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert!(matches!(
        err.into_service_error(),
        GetCommandInvocationError::InternalServerError(_)
    ));
    get_invocation(&ssm, CMD, "i-1").send().await.unwrap();
}

#[tokio::test]
async fn dropped_connections_get_no_answer() {
    let sim = simulator_with(CMD).await;
    let ssm = client(&sim);
    sim.inject(Fault::DropConnection { count: 1 });
    let err = get_invocation(&ssm, CMD, "i-1").send().await.unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "{err:?}"
    );
    get_invocation(&ssm, CMD, "i-1").send().await.unwrap();

    let retrying = client_with_retries(&sim, fast_retries(3));
    sim.inject(Fault::DropConnection { count: 2 });
    get_invocation(&retrying, CMD, "i-1").send().await.unwrap();
    assert_eq!(sim.calls("GetCommandInvocation"), 5);
}

/// A client giving each attempt `attempt` before it gives up, with `retry`.
fn impatient(sim: &Simulator, retry: RetryConfig, attempt: Duration) -> aws_sdk_ssm::Client {
    let config = client_with_retries(sim, retry)
        .config()
        .to_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(attempt)
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

#[tokio::test]
async fn slow_replies_outlast_an_impatient_client_and_answer_a_patient_one() {
    let sim = simulator_with(CMD).await;
    // Wide margins: on a loaded 2-core machine a normal reply can take well over 150 ms.
    let delay = Duration::from_millis(1500);

    // An attempt timeout shorter than the delay: the client gives up, the call still counts.
    let ssm = impatient(&sim, RetryConfig::disabled(), Duration::from_millis(400));
    sim.inject(Fault::Slow { count: 1, delay });
    let started = Instant::now();
    let err = get_invocation(&ssm, CMD, "i-1").send().await.unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert!(
        started.elapsed() < delay,
        "gave up after {:?}",
        started.elapsed()
    );
    assert_eq!(sim.calls("GetCommandInvocation"), 1);

    // The fault is used up: the next request is answered at once.
    let started = Instant::now();
    get_invocation(&ssm, CMD, "i-1").send().await.unwrap();
    assert!(started.elapsed() < delay, "took {:?}", started.elapsed());

    // A patient client gets the normal answer, only late.
    let patient = client(&sim);
    sim.inject(Fault::Slow { count: 1, delay });
    let started = Instant::now();
    let out = get_invocation(&patient, CMD, "i-1").send().await.unwrap();
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(out.instance_id(), Some("i-1"));

    // Retries ride over a few slow replies: each timed-out attempt is one more call.
    let retrying = impatient(&sim, fast_retries(3), Duration::from_millis(400));
    sim.inject(Fault::Slow { count: 2, delay });
    get_invocation(&retrying, CMD, "i-1").send().await.unwrap();
    assert_eq!(sim.calls("GetCommandInvocation"), 6);
}

#[tokio::test]
async fn latency_and_counters() {
    let sim = simulator_with(CMD).await;
    let ssm = client(&sim);
    assert_eq!(sim.total_calls(), 0);
    sim.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    ssm.list_commands().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.set_latency(Duration::ZERO);
    ssm.list_command_invocations()
        .command_id(CMD)
        .send()
        .await
        .unwrap();
    get_invocation(&ssm, CMD, "i-1").send().await.unwrap();
    assert_eq!(sim.calls("ListCommands"), 1);
    assert_eq!(sim.calls("ListCommandInvocations"), 1);
    assert_eq!(sim.calls("GetCommandInvocation"), 1);
    assert_eq!(sim.calls("SendCommand"), 0);
    assert_eq!(sim.total_calls(), 3);
}

/// One raw SSM request; the whole answer.
async fn raw(sim: &Simulator, target: &str, body: &str) -> String {
    raw_post(sim.local_addr(), "application/x-amz-json-1.1", target, body).await
}

#[tokio::test]
async fn wire_format_of_errors_and_unknown_operations() {
    let sim = simulator_with(CMD).await;
    let answer = raw(&sim, "AmazonSSM.DeleteEverything", "{}").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("content-type: application/x-amz-json-1.1"));
    assert!(
        answer.ends_with(r#"{"__type":"UnknownOperationException"}"#),
        "{answer}"
    );
    assert_eq!(sim.calls("DeleteEverything"), 1);

    let answer = raw(
        &sim,
        "AmazonSSM.GetCommandInvocation",
        r#"{"CommandId":"nope","InstanceId":"i-1"}"#,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(r#""__type":"InvocationDoesNotExist""#),
        "{answer}"
    );

    sim.inject(Fault::ServerError { count: 1 });
    let answer = raw(&sim, "AmazonSSM.ListCommands", "{}").await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(
        answer.contains(r#""__type":"InternalServerError""#),
        "{answer}"
    );

    let answer = raw(
        &sim,
        "AmazonSSM.ListCommandInvocations",
        &format!(r#"{{"CommandId":"{CMD}"}}"#),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""RequestedDateTime":1"#), "{answer}");
}
