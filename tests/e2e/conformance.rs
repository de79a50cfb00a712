//! Conformance against an independent SSM emulator (moto's server, from PyPI): a command sent
//! through moto with the real SDK is tracked by the operator to the status moto reports, and a
//! Command is sent by the operator through moto's SendCommand and followed to Success.
//! `make test` installs moto (`hack/test-deps.sh`) and requires this scenario to run.

use std::path::PathBuf;
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ssm::config::Credentials;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use ssm_operator::api::{Command as SsmCommand, CommandSpec};
use testbed::TestCluster;

use crate::support::{free_port, poll_until, spec, Operator, OperatorOptions, World, INSTANCE_ID};

/// moto's server binary: `MOTO_SERVER`, else the project's virtualenv.
pub fn moto_server() -> Option<PathBuf> {
    let path = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/moto_server")
        });
    path.exists().then_some(path)
}

/// A running moto server on a free loopback port; killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto's server (installed by `hack/test-deps.sh`).
    pub fn start() -> Moto {
        let server = moto_server().expect("moto_server: run hack/test-deps.sh");
        let port = free_port();
        let child = StdCommand::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The SDK configuration that reaches this moto (region eu-west-1, static test keys).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn moto_speaks_the_same_protocol(cluster: Arc<TestCluster>) {
    let moto = Moto::start();
    let endpoint = moto.endpoint.clone();
    let sdk = moto.sdk_config().await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let sent = poll_until("moto to accept SendCommand", || async {
        ssm.send_command()
            .document_name("AWS-RunShellScript")
            .instance_ids(INSTANCE_ID)
            .parameters("commands", vec!["echo conformance".to_string()])
            .comment("conformance check")
            .send()
            .await
            .ok()
    })
    .await;
    let command_id = sent
        .command()
        .and_then(|c| c.command_id())
        .expect("command id")
        .to_string();

    let world = World::new(cluster, "moto").await;
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: endpoint,
            args: vec!["--not-found-grace".into(), "2s".into()],
            ..OperatorOptions::default()
        },
    );
    let mut tracked = spec(Some("aws:runShellScript"));
    tracked.command_id = command_id.clone();
    world.create("via-moto", tracked.clone()).await;
    let obj = world.wait_condition("via-moto", "Finished", "True").await;
    let s = obj.status.clone().expect("status");
    assert_eq!(s.status.as_deref(), Some("Success"), "{s:#?}");
    assert_eq!(
        obj.condition("Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(s.document_name.as_deref(), Some("AWS-RunShellScript"));
    assert_eq!(s.comment.as_deref(), Some("conformance check"));
    assert_eq!(s.plugin_name.as_deref(), Some("aws:runShellScript"));
    assert_eq!(s.response_code, Some(0));
    assert!(
        s.execution_elapsed_time.is_some(),
        "moto reports an elapsed time"
    );

    // moto answers a wrong step name with InvocationDoesNotExist: after the grace window the
    // resource stalls as InvocationNotFound, with no crash and no hot loop.
    tracked.plugin_name = Some("no-such-step".into());
    world.create("moto-wrong-step", tracked).await;
    let stalled = world
        .wait_condition("moto-wrong-step", "Stalled", "True")
        .await;
    let reason = stalled.condition("Stalled").map(|c| c.reason.clone());
    assert!(
        matches!(
            reason.as_deref(),
            Some("InvocationNotFound" | "InvalidPluginName")
        ),
        "{reason:?}"
    );
    operator.stop().await;
}

/// The nodes the moto Command runs on.
const MOTO_NODES: [&str; 2] = ["i-0ccccccccccccccc1", "i-0ccccccccccccccc2"];

/// The operator sends a Command through moto's SendCommand and follows it: one command in
/// moto carrying the marker, the counts moto reports, a child per node tracked to Success.
/// (moto answers ListCommandInvocations and CancelCommand with HTTP 500: `instanceIds` needs
/// neither, and a finished run is never cancelled.)
pub async fn moto_sends_a_command(cluster: Arc<TestCluster>) {
    let moto = Moto::start();
    let sdk = moto.sdk_config().await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    poll_until("moto to answer ListCommands", || async {
        ssm.list_commands().send().await.ok()
    })
    .await;
    // The filter the operator's search for an unanswered send uses, in its exact form: moto
    // must not refuse it (it ignores ListCommands filters).
    let invoked_after = aws_sdk_ssm::types::CommandFilter::builder()
        .key(aws_sdk_ssm::types::CommandFilterKey::InvokedAfter)
        .value(
            k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        )
        .build()
        .expect("filter");
    let filtered = ssm
        .list_commands()
        .filters(invoked_after)
        .max_results(50)
        .send()
        .await;
    assert!(
        filtered.is_ok(),
        "moto refused ListCommands with InvokedAfter: {:?}",
        filtered.map_err(aws_sdk_ssm::error::DisplayErrorContext)
    );

    let world = World::new(cluster, "moto-send").await;
    let operator = Operator::sending(&world, &moto.endpoint, &[]);
    let commands: Api<SsmCommand> = world.api_of();
    let spec = CommandSpec {
        document_name: "AWS-RunShellScript".into(),
        parameters: Some([("commands".to_string(), vec!["uptime".to_string()])].into()),
        instance_ids: Some(MOTO_NODES.iter().map(|s| s.to_string()).collect()),
        comment: Some("moto conformance".into()),
        timeout_seconds: Some(600),
        ..CommandSpec::default()
    };
    commands
        .create(&PostParams::default(), &SsmCommand::new("via-moto", spec))
        .await
        .expect("create Command");

    let done = world
        .wait_on("via-moto", "Ready=True", |c: &SsmCommand| {
            c.condition("Ready").is_some_and(|r| r.status == "True")
        })
        .await;
    let s = done.status.clone().expect("status");
    assert_eq!(s.status.as_deref(), Some("Success"), "{s:#?}");
    assert_eq!(
        (s.target_count, s.completed_count, s.error_count),
        (Some(2), Some(2), Some(0)),
        "{s:#?}"
    );
    assert_eq!(s.done.as_deref(), Some("2/2"));
    assert_eq!(s.observed_generation, Some(1));
    let command_id = s.command_id.clone().expect("commandId recorded");
    let marker = s.send.as_ref().map(|r| r.marker.clone()).expect("marker");

    // moto holds exactly one command carrying the marker: the one the status names.
    let listed = ssm.list_commands().send().await.expect("ListCommands");
    let carrying: Vec<_> = listed
        .commands()
        .iter()
        .filter(|c| c.comment().is_some_and(|m| m.ends_with(&marker)))
        .collect();
    assert_eq!(carrying.len(), 1, "{:#?}", listed.commands());
    assert_eq!(carrying[0].command_id(), Some(command_id.as_str()));
    assert_eq!(
        carrying[0].comment(),
        Some(format!("moto conformance {marker}").as_str())
    );
    let mut sent_to: Vec<&str> = carrying[0]
        .instance_ids()
        .iter()
        .map(String::as_str)
        .collect();
    sent_to.sort_unstable();
    assert_eq!(sent_to, MOTO_NODES);

    // A child per node, tracked through GetCommandInvocation to Success.
    for node in MOTO_NODES {
        let child = world
            .wait_status(&format!("via-moto-{node}"), "Success")
            .await;
        assert_eq!(child.spec.command_id, command_id);
        let cs = child.status.expect("child status");
        assert_eq!(cs.response_code, Some(0), "{cs:#?}");
        assert_eq!(cs.plugin_name.as_deref(), Some("aws:runShellScript"));
    }

    // A finished run needs no CancelCommand (which moto cannot answer): deletion goes through.
    commands
        .delete("via-moto", &DeleteParams::default())
        .await
        .expect("delete");
    world.wait_gone::<SsmCommand>("via-moto").await;
    let log = operator.log();
    assert!(
        !log.contains("CancelCommand"),
        "a finished run was cancelled:\n{}",
        operator.log_tail()
    );
    operator.stop().await;
}
