//! SendCommand's scripts, targets and own faults, the records of sends and cancels, and
//! ListCommands' time filters and lag, through the SDK (and the binary's scenario fields).

use std::ffi::OsStr;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::error::SdkError;
use aws_sdk_ssm::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ssm::types::{
    CommandFilter, CommandFilterKey, CommandInvocationStatus, CommandStatus, Target,
};
use aws_sdk_ssm::Client;
use ssm_sim::{Invocation, Plugin, SendFault, Simulator};

use crate::common::{
    client, client_at, code, eventually, get_invocation, ms, spawn_binary, terminate,
};

const MARKER: &str = "op:0123456789abcdef";

/// SendCommand of `AWS-RunShellScript` to `i-1` with the test marker in its comment.
async fn send(ssm: &Client) -> Result<String, String> {
    ssm.send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids("i-1")
        .comment(format!("deploy {MARKER}"))
        .send()
        .await
        .map(|out| out.command().unwrap().command_id().unwrap().to_string())
        .map_err(|e| code(&e).unwrap_or_else(|| format!("{e:?}")))
}

fn web() -> Target {
    Target::builder().key("tag:Role").values("web").build()
}

/// ListCommands filter `InvokedAfter` `t`, spelt as the SDK's users spell it.
fn invoked_after(t: SystemTime) -> CommandFilter {
    CommandFilter::builder()
        .key(CommandFilterKey::InvokedAfter)
        .value(DateTime::from(t).fmt(DateTimeFormat::DateTime).unwrap())
        .build()
        .unwrap()
}

/// The comments of the commands ListCommands lists with `filter`.
async fn comments_listed(ssm: &Client, filter: CommandFilter) -> Vec<String> {
    let out = ssm.list_commands().filters(filter).send().await.unwrap();
    out.commands()
        .iter()
        .map(|c| c.comment().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn send_faults_refuse_throttle_and_lose_replies() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let before = SystemTime::now() - Duration::from_secs(300);
    for refusal in [
        "InvalidDocument",
        "InvalidParameters",
        "InvalidInstanceId",
        "InvalidOutputFolder",
    ] {
        sim.inject_send(SendFault::refuse(refusal, "refused by the test"));
        assert_eq!(send(&ssm).await, Err(refusal.to_string()));
    }
    sim.inject_send(SendFault::Throttle);
    assert_eq!(send(&ssm).await, Err("ThrottlingException".to_string()));
    assert_eq!(sim.throttled(), 1);
    // Other operations do not take SendCommand's faults.
    sim.inject_send(SendFault::AcceptThenFail);
    ssm.list_commands().send().await.unwrap();
    assert!(sim.sent().is_empty());

    let err = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids("i-1")
        .comment(format!("deploy {MARKER}"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(code(&err).as_deref(), Some("InternalServerError"));
    // The command exists all the same: found by its marker, as the operator searches.
    let sent = sim.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sim.sent_with(MARKER), 1);
    let listed = comments_listed(&ssm, invoked_after(before)).await;
    assert_eq!(listed, [format!("deploy {MARKER}")]);
    let found = get_invocation(&ssm, &sent[0].command_id, "i-1")
        .send()
        .await;
    assert!(found.is_ok());

    // The queue is spent: the next send is answered.
    let second = send(&ssm).await.unwrap();
    assert_eq!(sim.sent_with(MARKER), 2);
    assert_eq!(sim.sent()[1].command_id, second);
    assert_eq!(sim.calls("SendCommand"), 7);
    assert_eq!(sim.calls("ListCommands"), 2);

    sim.inject_send(SendFault::Throttle);
    sim.clear_send_faults();
    send(&ssm).await.unwrap();
}

#[tokio::test]
async fn a_hanging_send_creates_the_command_before_the_client_gives_up() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let delay = Duration::from_millis(1500);
    sim.inject_send(SendFault::AcceptThenHang { delay });
    let started = Instant::now();
    // The client dies while waiting: its request future is dropped.
    let gave_up = tokio::time::timeout(ms(400), send(&ssm)).await;
    assert!(gave_up.is_err(), "answered after {:?}", started.elapsed());
    assert_eq!(sim.sent_with(MARKER), 1);
    let command_id = sim.sent()[0].command_id.clone();
    let out = ssm
        .list_commands()
        .command_id(&command_id)
        .send()
        .await
        .unwrap();
    assert_eq!(out.commands().len(), 1);

    // A patient client gets the normal answer, late.
    sim.inject_send(SendFault::AcceptThenHang { delay });
    let started = Instant::now();
    let id = send(&ssm).await.unwrap();
    assert!(started.elapsed() >= delay, "after {:?}", started.elapsed());
    assert_eq!(sim.sent()[1].command_id, id);
}

#[tokio::test]
async fn scripted_targets_resolve_over_time() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.resolve_target("tag:Role", "web", [("i-web1", ms(0)), ("i-web2", ms(800))]);
    sim.script_instance(
        Invocation::new("i-web1")
            .plugin(Plugin::failing_at("", ms(100), ms(200), 3).stderr("disk full\n")),
    );
    sim.set_send_default([Plugin::succeeding("", ms(300)).stdout("ok\n")]);
    let out = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .targets(web())
        .max_concurrency("1")
        .send()
        .await
        .unwrap();
    let command = out.command().unwrap();
    let id = command.command_id().unwrap().to_string();
    assert_eq!(command.target_count(), 1);
    assert!(command.instance_ids().is_empty());
    assert_eq!(command.targets(), [web()]);
    assert_eq!(command.max_concurrency(), Some("1"));
    assert!(matches!(
        get_invocation(&ssm, &id, "i-web2").send().await,
        Err(SdkError::ServiceError(_))
    ));

    let failed = eventually("i-web1 to fail", Duration::from_secs(3), || async {
        get_invocation(&ssm, &id, "i-web1")
            .send()
            .await
            .ok()
            .filter(|o| o.status() == Some(&CommandInvocationStatus::Failed))
    })
    .await;
    assert_eq!(failed.response_code(), 3);
    assert_eq!(failed.standard_error_content(), Some("disk full\n"));

    let done = eventually("the command to finish", Duration::from_secs(5), || async {
        let out = ssm.list_commands().command_id(&id).send().await.unwrap();
        let command = out.commands()[0].clone();
        (command.completed_count() == 2).then_some(command)
    })
    .await;
    assert_eq!(done.target_count(), 2);
    assert_eq!(done.status(), Some(&CommandStatus::Failed));
    assert_eq!(done.error_count(), 1);
    let invocations = ssm
        .list_command_invocations()
        .command_id(&id)
        .details(true)
        .send()
        .await
        .unwrap();
    let web2 = &invocations.command_invocations()[1];
    assert_eq!(web2.instance_id(), Some("i-web2"));
    assert_eq!(web2.command_plugins()[0].output(), Some("ok\n"));
    assert_eq!(
        sim.sent()[0].targets,
        [("tag:Role".to_string(), vec!["web".to_string()])]
    );

    let nobody = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .targets(Target::builder().key("tag:Role").values("db").build())
        .send()
        .await
        .unwrap();
    let nobody = nobody.command().unwrap();
    assert_eq!(nobody.status(), Some(&CommandStatus::Success));
    assert_eq!(nobody.target_count(), 0);

    sim.refuse_document("Custom-Missing");
    let refused = ssm
        .send_command()
        .document_name("Custom-Missing")
        .targets(web())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&refused).as_deref(), Some("InvalidDocument"));
    let neither = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&neither).as_deref(), Some("ValidationException"));
    assert_eq!(sim.sent().len(), 2);
}

#[tokio::test]
async fn cancels_are_recorded_and_end_the_command_cancelled() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.set_send_default([Plugin::succeeding("", Duration::from_secs(60))]);
    let id = send(&ssm).await.unwrap();
    ssm.cancel_command().command_id(&id).send().await.unwrap();
    let unknown = ssm.cancel_command().command_id("nope").send().await;
    assert!(unknown.is_err());
    assert_eq!(sim.cancelled(), [id.clone(), "nope".to_string()]);
    assert_eq!(sim.calls("CancelCommand"), 2);
    let cancelled = eventually("Cancelled", Duration::from_secs(4), || async {
        let out = ssm.list_commands().command_id(&id).send().await.unwrap();
        let command = out.commands()[0].clone();
        (command.status() == Some(&CommandStatus::Cancelled)).then_some(command)
    })
    .await;
    assert_eq!(cancelled.completed_count(), 1);
}

#[tokio::test]
async fn list_commands_lags_behind_sends() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    sim.set_list_commands_lag(ms(1000));
    let before = SystemTime::now() - Duration::from_secs(300);
    let started = Instant::now();
    let id = send(&ssm).await.unwrap();
    let by_id = ssm.list_commands().command_id(&id).send().await.unwrap();
    if started.elapsed() < ms(900) {
        assert!(by_id.commands().is_empty());
        assert!(comments_listed(&ssm, invoked_after(before))
            .await
            .is_empty());
    }
    get_invocation(&ssm, &id, "i-1").send().await.unwrap();
    eventually(
        "the command to be listed",
        Duration::from_secs(3),
        || async {
            let listed = comments_listed(&ssm, invoked_after(before)).await;
            (listed == [format!("deploy {MARKER}")]).then_some(())
        },
    )
    .await;
    assert!(started.elapsed() >= ms(1000));
    // Sent after the filter's instant only.
    let later = comments_listed(&ssm, invoked_after(SystemTime::now() + ms(2000))).await;
    assert!(later.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_send_scripts_and_targets_from_its_scenario() {
    let scenario =
        std::env::temp_dir().join(format!("ssm-sim-send-test-{}.json", std::process::id()));
    std::fs::write(
        &scenario,
        r#"{"sendScripts":{"i-web1":{"plugins":[{"name":"","stdout":"hi\n",
              "steps":[{"after_ms":0,"status":"Success"}]}]}},
            "targets":[{"key":"tag:Role","value":"web","instances":[
              {"instanceId":"i-web1","appearsAfterMs":0},
              {"instanceId":"i-web2","appearsAfterMs":60000}]}]}"#,
    )
    .unwrap();
    let args = ["--scenario"].map(OsStr::new);
    let (mut child, endpoint, _stdout) =
        spawn_binary(args.into_iter().chain([scenario.as_os_str()])).await;
    let ssm = client_at(&endpoint, RetryConfig::disabled());
    let out = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .targets(web())
        .send()
        .await
        .unwrap();
    let id = out.command().unwrap().command_id().unwrap().to_string();
    let web1 = get_invocation(&ssm, &id, "i-web1").send().await.unwrap();
    assert_eq!(web1.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(web1.standard_output_content(), Some("hi\n"));
    let listed = ssm.list_commands().command_id(&id).send().await.unwrap();
    let command = &listed.commands()[0];
    assert_eq!(command.target_count(), 1);
    assert_eq!(command.status(), Some(&CommandStatus::InProgress));
    terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_file(scenario);
}

/// A multi-step document sent with SendCommand (`AWS-RunRemoteScript`-like: download, the
/// PowerShell step skipped, then the shell step), one node failing in its last step: every
/// step is listed in document order with its own timeline, the invocation's status comes
/// from its steps, and GetCommandInvocation needs a step name, as SSM's does.
#[tokio::test]
async fn a_multi_step_document_is_sent_listed_per_step_and_refuses_a_get_without_a_step() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let download = || Plugin::succeeding_at("downloadContent", ms(0), ms(50)).stdout("got it");
    sim.set_send_default([
        download(),
        Plugin::skipped("runPowerShellScript", ms(60)),
        Plugin::succeeding_at("runShellScript", ms(60), ms(150)).stdout("ran"),
    ]);
    sim.script_instance(
        Invocation::new("i-2")
            .plugin(download())
            .plugin(Plugin::skipped("runPowerShellScript", ms(60)))
            .plugin(Plugin::failing_at("runShellScript", ms(60), ms(150), 2).stderr("boom")),
    );
    let command_id = ssm
        .send_command()
        .document_name("AWS-RunRemoteScript")
        .instance_ids("i-1")
        .instance_ids("i-2")
        .send()
        .await
        .unwrap()
        .command()
        .unwrap()
        .command_id()
        .unwrap()
        .to_string();

    // While the last step runs, the invocation is InProgress and its steps are their own.
    let running = eventually("the shell step runs", Duration::from_secs(5), || async {
        let out = ssm
            .list_command_invocations()
            .command_id(&command_id)
            .instance_id("i-1")
            .details(true)
            .send()
            .await
            .unwrap();
        let inv = out.command_invocations().first()?.clone();
        (inv.command_plugins().first()?.status()
            == Some(&aws_sdk_ssm::types::CommandPluginStatus::Success))
        .then_some(inv)
    })
    .await;
    assert_eq!(running.command_plugins().len(), 3, "one node, filtered");
    let names: Vec<&str> = running
        .command_plugins()
        .iter()
        .map(|p| p.name().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["downloadContent", "runPowerShellScript", "runShellScript"],
        "document order"
    );

    let err = get_invocation(&ssm, &command_id, "i-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("InvalidPluginName"), "{err:?}");

    let ended = eventually("both nodes end", Duration::from_secs(5), || async {
        let out = ssm
            .list_command_invocations()
            .command_id(&command_id)
            .details(true)
            .send()
            .await
            .unwrap();
        let all = out.command_invocations().to_vec();
        all.iter()
            .all(|i| {
                matches!(
                    i.status(),
                    Some(CommandInvocationStatus::Success | CommandInvocationStatus::Failed)
                )
            })
            .then_some(all)
    })
    .await;
    let status_of = |node: &str| {
        let inv = ended
            .iter()
            .find(|i| i.instance_id() == Some(node))
            .unwrap();
        let steps: Vec<(String, i32)> = inv
            .command_plugins()
            .iter()
            .map(|p| (p.status().unwrap().as_str().to_string(), p.response_code()))
            .collect();
        (inv.status().unwrap().as_str().to_string(), steps)
    };
    let ok = |code| ("Success".to_string(), code);
    assert_eq!(
        status_of("i-1"),
        ("Success".into(), vec![ok(0), ok(0), ok(0)]),
        "a skipped step is a form of success"
    );
    assert_eq!(
        status_of("i-2"),
        ("Failed".into(), vec![ok(0), ok(0), ("Failed".into(), 2)]),
    );
    let skipped = ended[0].command_plugins()[1].output().unwrap_or_default();
    assert!(
        skipped.starts_with("Step execution skipped due to unsatisfied preconditions"),
        "{skipped}"
    );

    // With a step name, Get answers that step alone.
    let failed = get_invocation(&ssm, &command_id, "i-2")
        .plugin_name("runShellScript")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), Some(&CommandInvocationStatus::Failed));
    assert_eq!(failed.response_code(), 2);
    assert_eq!(failed.standard_error_content(), Some("boom"));
    let first = get_invocation(&ssm, &command_id, "i-2")
        .plugin_name("downloadContent")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(first.standard_output_content(), Some("got it"));

    // The command counts nodes, not steps.
    let listed = ssm
        .list_commands()
        .command_id(&command_id)
        .send()
        .await
        .unwrap();
    let command = &listed.commands()[0];
    assert_eq!(command.status(), Some(&CommandStatus::Failed));
    assert_eq!(
        (
            command.target_count(),
            command.completed_count(),
            command.error_count()
        ),
        (2, 2, 1)
    );
}
