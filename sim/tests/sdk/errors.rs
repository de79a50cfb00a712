//! Every error code the simulator answers, as the SDK surfaces it.

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::operation::cancel_command::CancelCommandError;
use aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationError;
use aws_sdk_ssm::operation::list_commands::ListCommandsError;
use ssm_sim::{Command, Fault, Invocation, Simulator};

use crate::common::{client, code};

const CMD: &str = "5f0e6d1c-2b3a-4c4d-9e5f-6a7b8c9d0e1f";

#[tokio::test]
async fn get_command_invocation_errors_are_typed() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.add_command(
        Command::new(CMD)
            .invocation(Invocation::new("i-ok"))
            .invocation(Invocation::new("i-bad-cmd").always_error("InvalidCommandId", "bad id"))
            .invocation(Invocation::new("i-bad-inst").always_error("InvalidInstanceId", "gone"))
            .invocation(Invocation::new("i-denied").always_error("AccessDeniedException", "no"))
            .invocation(Invocation::new("i-invalid").always_error("ValidationException", "bad"))
            .invocation(Invocation::new("i-500").always_error("InternalServerError", "oops")),
    );
    let get = |cmd: &str, instance: &str| {
        ssm.get_command_invocation()
            .command_id(cmd)
            .instance_id(instance)
            .send()
    };

    let err = get("does-not-exist", "i-ok").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvocationDoesNotExist"));
    assert!(matches!(
        err.into_service_error(),
        GetCommandInvocationError::InvocationDoesNotExist(_)
    ));
    let err = get(CMD, "i-unknown")
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        GetCommandInvocationError::InvocationDoesNotExist(_)
    ));

    let err = get(CMD, "i-bad-cmd")
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, GetCommandInvocationError::InvalidCommandId(_)),
        "{err:?}"
    );
    assert_eq!(err.message(), Some("bad id"));
    let err = get(CMD, "i-bad-inst")
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, GetCommandInvocationError::InvalidInstanceId(_)),
        "{err:?}"
    );

    let err = get(CMD, "i-denied").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("AccessDeniedException"));
    assert_eq!(err.message(), Some("no"));
    let err = get(CMD, "i-invalid").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ValidationException"));

    let err = get(CMD, "i-500").await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert!(matches!(
        err.into_service_error(),
        GetCommandInvocationError::InternalServerError(_)
    ));

    sim.inject(Fault::Throttle { count: 1 });
    let err = get(CMD, "i-ok").await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ThrottlingException"));
    assert_eq!(err.message(), Some("Rate exceeded"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    assert!(get(CMD, "i-ok").await.is_ok());
}

#[tokio::test]
async fn other_operations_reject_bad_input() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.add_command(Command::new(CMD).invocation(Invocation::new("i-1")));

    let err = ssm
        .cancel_command()
        .command_id("no-such-command")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, CancelCommandError::InvalidCommandId(_)),
        "{err:?}"
    );
    let err = ssm
        .cancel_command()
        .command_id(CMD)
        .instance_ids("i-other")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, CancelCommandError::InvalidInstanceId(_)),
        "{err:?}"
    );

    let err = ssm
        .list_commands()
        .command_id("no-such-command")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, ListCommandsError::InvalidCommandId(_)),
        "{err:?}"
    );

    let err = ssm
        .list_command_invocations()
        .command_id(CMD)
        .max_results(51)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ValidationException"));
    let err = ssm
        .list_command_invocations()
        .command_id(CMD)
        .next_token("garbage")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidNextToken"));

    let err = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ValidationException"));
}
