//! Paging and filters of ListCommandInvocations and ListCommands.

use std::time::Duration;

use aws_sdk_ssm::types::{CommandInvocationStatus, CommandStatus};
use ssm_sim::{Command, Invocation, Plugin, Simulator};

use crate::common::client;

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
