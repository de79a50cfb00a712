//! Paging and filters of ListCommandInvocations and ListCommands.

use std::time::Duration;

use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey, CommandInvocationStatus, CommandStatus};
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};

use crate::common::{client, code};

#[tokio::test]
async fn list_command_invocations_pages_by_50() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let cmd = "7a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
    let mut command = Command::new(cmd);
    let instances: Vec<String> = (0..120).map(|i| format!("i-{i:017x}")).collect();
    for id in &instances {
        command = command.invocation(
            Invocation::new(id).plugin(Plugin::succeeding("aws:runShellScript", Duration::ZERO)),
        );
    }
    sim.add_command(command);

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ssm
            .list_command_invocations()
            .command_id(cmd)
            .details(true)
            .set_next_token(token.take())
            .send()
            .await
            .unwrap();
        sizes.push(page.command_invocations().len());
        for inv in page.command_invocations() {
            assert_eq!(inv.status(), Some(&CommandInvocationStatus::Success));
            assert_eq!(inv.command_plugins().len(), 1);
            seen.push(inv.instance_id().unwrap().to_string());
        }
        match page.next_token() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(sizes, [50, 50, 20]);
    assert_eq!(seen, instances);
    assert_eq!(sim.calls("ListCommandInvocations"), 3);

    // Smaller pages, no details, one instance.
    let page = ssm
        .list_command_invocations()
        .command_id(cmd)
        .max_results(7)
        .send()
        .await
        .unwrap();
    assert_eq!(page.command_invocations().len(), 7);
    assert!(page.command_invocations()[0].command_plugins().is_empty());
    assert!(page.next_token().is_some());
    let one = ssm
        .list_command_invocations()
        .command_id(cmd)
        .instance_id(&instances[42])
        .send()
        .await
        .unwrap();
    assert_eq!(one.command_invocations().len(), 1);
    assert_eq!(
        one.command_invocations()[0].instance_id(),
        Some(instances[42].as_str())
    );
    assert!(one.next_token().is_none());
}

#[tokio::test]
async fn list_commands_filters_and_pages_newest_first() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    for n in 0..5 {
        let mut command = Command::new(format!("cmd-{n}")).comment(format!("#{n}"));
        command = command.invocation(Invocation::new("i-shared"));
        if n % 2 == 0 {
            command = command.invocation(Invocation::new("i-even"));
        }
        sim.add_command(command);
    }

    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ssm
            .list_commands()
            .max_results(2)
            .set_next_token(token.take())
            .send()
            .await
            .unwrap();
        assert!(page.commands().len() <= 2);
        ids.extend(
            page.commands()
                .iter()
                .map(|c| c.command_id().unwrap().to_string()),
        );
        match page.next_token() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(ids, ["cmd-4", "cmd-3", "cmd-2", "cmd-1", "cmd-0"]);

    let even = ssm
        .list_commands()
        .instance_id("i-even")
        .send()
        .await
        .unwrap();
    let even: Vec<_> = even
        .commands()
        .iter()
        .map(|c| c.command_id().unwrap())
        .collect();
    assert_eq!(even, ["cmd-4", "cmd-2", "cmd-0"]);

    let one = ssm
        .list_commands()
        .command_id("cmd-2")
        .send()
        .await
        .unwrap();
    let command = &one.commands()[0];
    assert_eq!(command.comment(), Some("#2"));
    assert_eq!(command.target_count(), 2);
    assert_eq!(command.status(), Some(&CommandStatus::Pending));
    assert_eq!(command.document_name(), Some("AWS-RunShellScript"));
    assert!(command.requested_date_time().is_some());
    assert_eq!(command.instance_ids(), ["i-shared", "i-even"]);

    let none = ssm
        .list_commands()
        .command_id("cmd-1")
        .instance_id("i-even")
        .send()
        .await
        .unwrap();
    assert!(none.commands().is_empty());

    let across = ssm
        .list_command_invocations()
        .instance_id("i-shared")
        .send()
        .await
        .unwrap();
    let cmds: Vec<_> = across
        .command_invocations()
        .iter()
        .map(|i| i.command_id().unwrap())
        .collect();
    assert_eq!(cmds, ["cmd-4", "cmd-3", "cmd-2", "cmd-1", "cmd-0"]);

    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ssm
            .list_command_invocations()
            .max_results(3)
            .set_next_token(token.take())
            .send()
            .await
            .unwrap();
        all.extend(
            page.command_invocations()
                .iter()
                .map(|i| format!("{}/{}", i.command_id().unwrap(), i.instance_id().unwrap())),
        );
        match page.next_token() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(
        all,
        [
            "cmd-4/i-shared",
            "cmd-4/i-even",
            "cmd-3/i-shared",
            "cmd-2/i-shared",
            "cmd-2/i-even",
            "cmd-1/i-shared",
            "cmd-0/i-shared",
            "cmd-0/i-even"
        ]
    );
}

/// A ListCommandInvocations filter: `key` = `value`.
fn filter(key: CommandFilterKey, value: &str) -> CommandFilter {
    CommandFilter::builder()
        .key(key)
        .value(value)
        .build()
        .unwrap()
}

/// Every page of a command through the SDK, with details: (instance, status) in order.
async fn walk(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    status: Option<&str>,
    max_results: i32,
) -> (Vec<(String, CommandInvocationStatus)>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let mut request = ssm
            .list_command_invocations()
            .command_id(command_id)
            .details(true)
            .max_results(max_results)
            .set_next_token(token.take());
        if let Some(status) = status {
            request = request.filters(filter(CommandFilterKey::Status, status));
        }
        let page = request.send().await.unwrap();
        pages += 1;
        assert!(page.command_invocations().len() <= max_results as usize);
        seen.extend(page.command_invocations().iter().map(|inv| {
            (
                inv.instance_id().unwrap().to_string(),
                inv.status().unwrap().clone(),
            )
        }));
        match page.next_token() {
            Some(next) => token = Some(next.to_string()),
            None => return (seen, pages),
        }
    }
}

#[tokio::test]
async fn list_command_invocations_filters_by_status() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let cmd = "8b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    let ms = Duration::from_millis;
    let plugins = [
        ("i-success", Plugin::succeeding("p", ms(0))),
        ("i-failed", Plugin::failing_at("p", ms(0), ms(0), 2)),
        (
            "i-running",
            Plugin::new("p").step(ms(0), Status::InProgress),
        ),
        ("i-pending", Plugin::new("p")),
        ("i-delayed", Plugin::new("p").step(ms(0), Status::Delayed)),
        (
            "i-delivery",
            Plugin::new("p").step_with(ms(0), Status::TimedOut, "Delivery Timed Out", -1),
        ),
        (
            "i-execution",
            Plugin::new("p").step(ms(0), Status::TimedOut),
        ),
        (
            "i-undeliverable",
            Plugin::new("p").step_with(ms(0), Status::Failed, "Undeliverable", -1),
        ),
        ("i-success-2", Plugin::succeeding("p", ms(0))),
    ];
    let mut command = Command::new(cmd);
    for (instance, plugin) in plugins {
        command = command.invocation(Invocation::new(instance).plugin(plugin));
    }
    sim.add_command(command);

    let instances = |listed: Vec<(String, CommandInvocationStatus)>| -> Vec<String> {
        listed.into_iter().map(|(instance, _)| instance).collect()
    };
    let (all, _) = walk(&ssm, cmd, None, 50).await;
    assert_eq!(all.len(), 9);
    for (value, expected) in [
        ("Success", vec!["i-success", "i-success-2"]),
        ("Failed", vec!["i-failed", "i-undeliverable"]),
        ("InProgress", vec!["i-running"]),
        ("Pending", vec!["i-pending"]),
        ("Delayed", vec!["i-delayed"]),
        ("TimedOut", vec!["i-delivery", "i-execution"]),
        ("DeliveryTimedOut", vec!["i-delivery"]),
        ("ExecutionTimedOut", vec!["i-execution"]),
        ("Undeliverable", vec!["i-undeliverable"]),
        ("Cancelled", vec![]),
        ("Terminated", vec![]),
    ] {
        let (listed, _) = walk(&ssm, cmd, Some(value), 50).await;
        assert_eq!(instances(listed), expected, "Status={value}");
    }
    // Filtered pages hold MaxResults matches each.
    let (listed, pages) = walk(&ssm, cmd, Some("Success"), 1).await;
    assert_eq!(instances(listed), ["i-success", "i-success-2"]);
    assert_eq!(pages, 2);

    // Other keys are ignored; several Status filters must all match.
    let both = |a: &str, b: &str| {
        ssm.list_command_invocations()
            .command_id(cmd)
            .filters(filter(CommandFilterKey::Status, a))
            .filters(filter(CommandFilterKey::DocumentName, b))
            .send()
    };
    let page = both("Pending", "Some-Other-Document").await.unwrap();
    assert_eq!(page.command_invocations().len(), 1);
    let page = ssm
        .list_command_invocations()
        .command_id(cmd)
        .filters(filter(CommandFilterKey::Status, "Success"))
        .filters(filter(CommandFilterKey::Status, "Failed"))
        .send()
        .await
        .unwrap();
    assert!(page.command_invocations().is_empty());

    // By instance across commands, and with both ids.
    let page = ssm
        .list_command_invocations()
        .instance_id("i-failed")
        .filters(filter(CommandFilterKey::Status, "Failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.command_invocations().len(), 1);
    let page = ssm
        .list_command_invocations()
        .command_id(cmd)
        .instance_id("i-failed")
        .filters(filter(CommandFilterKey::Status, "Success"))
        .send()
        .await
        .unwrap();
    assert!(page.command_invocations().is_empty());

    // A value the API reference does not list for ListCommandInvocations.
    let err = ssm
        .list_command_invocations()
        .command_id(cmd)
        .filters(filter(CommandFilterKey::Status, "Cancelling"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("ValidationException"));
}

#[tokio::test]
async fn list_command_invocations_pages_500_with_details() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let cmd = "9c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f";
    let mut command = Command::new(cmd);
    let instances: Vec<String> = (0..500).map(|i| format!("i-{i:017x}")).collect();
    for (i, id) in instances.iter().enumerate() {
        let plugin = if i % 20 == 7 {
            Plugin::failing_at("aws:runShellScript", Duration::ZERO, Duration::ZERO, 1)
                .stderr("exit status 1\n")
        } else {
            Plugin::succeeding_at("aws:runShellScript", Duration::ZERO, Duration::ZERO)
        };
        command = command.invocation(Invocation::new(id).plugin(plugin.stdout(format!("{id}\n"))));
    }
    sim.add_command(command);

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = ssm
            .list_command_invocations()
            .command_id(cmd)
            .details(true)
            .max_results(50)
            .set_next_token(token.take())
            .send()
            .await
            .unwrap();
        for inv in page.command_invocations() {
            let id = inv.instance_id().unwrap();
            let [plugin] = inv.command_plugins() else {
                panic!("one plugin expected for {id}");
            };
            let failed = seen.len() % 20 == 7;
            let (status, code, output) = if failed {
                (
                    CommandInvocationStatus::Failed,
                    1,
                    format!("{id}\n\n----------ERROR-------\nexit status 1\n"),
                )
            } else {
                (CommandInvocationStatus::Success, 0, format!("{id}\n"))
            };
            assert_eq!(inv.status(), Some(&status), "{id}");
            assert_eq!(plugin.response_code(), code, "{id}");
            assert_eq!(plugin.output(), Some(output.as_str()), "{id}");
            assert!(plugin.response_finish_date_time().is_some());
            seen.push(id.to_string());
        }
        match page.next_token() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, instances);
    assert_eq!(sim.calls("ListCommandInvocations"), 10);
}

/// The fleet of `make bench` (20 commands x 500 invocations), added at once and walked
/// through the SDK page by page with details: fast, because a page walks only its items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_10000_through_the_sdk() {
    let sim = Simulator::start().await.unwrap();
    let ssm = client(&sim);
    let started = std::time::Instant::now();
    let commands: Vec<Command> = (0..20)
        .map(|c| {
            (0..500u64).fold(
                Command::new(format!("00000000-0000-4000-8000-{c:012x}")),
                |command, i| {
                    let done = Duration::from_millis(i * 120);
                    command.invocation(
                        Invocation::new(format!("i-{i:017x}")).plugin(Plugin::succeeding_at(
                            "aws:runShellScript",
                            done / 2,
                            done,
                        )),
                    )
                },
            )
        })
        .collect();
    let start = sim.add_commands(commands);
    assert!(start >= started);
    let added = started.elapsed();
    let mut total = 0;
    for c in 0..20 {
        let (listed, pages) =
            walk(&ssm, &format!("00000000-0000-4000-8000-{c:012x}"), None, 50).await;
        assert_eq!((listed.len(), pages), (500, 10));
        total += listed.len();
    }
    let walked = started.elapsed() - added;
    assert_eq!(total, 10_000);
    assert_eq!(sim.calls("ListCommandInvocations"), 200);
    eprintln!("10,000 invocations added in {added:?}, 200 pages through the SDK in {walked:?}");
    // Generous: a debug build on a loaded 2-core machine.
    assert!(walked < Duration::from_secs(30), "{walked:?}");
}
