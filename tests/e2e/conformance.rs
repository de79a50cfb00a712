//! Conformance against an independent SSM emulator (moto's server, from PyPI): a command sent
//! through moto with the real SDK is tracked by the operator to the status moto reports.
//! `make test` installs moto (`hack/test-deps.sh`) and requires this scenario to run.

use std::path::PathBuf;
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ssm::config::Credentials;
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
