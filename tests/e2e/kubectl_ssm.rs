//! The `kubectl ssm` plugin end to end: the real `kubectl-ssm` binary found by `kubectl` on
//! `PATH` (krew's plugin convention), against the real API server, the operator binary with
//! `--send-commands` and the SSM simulator; `logs --full` against moto's S3 and CloudWatch Logs.
//! What a user sees: exit statuses, the lines on stdout/stderr, a bar redrawn in place under a
//! pseudo-terminal, and the Command left in place on timeout.
//!
//! The binary is built by `make e2e` (`cargo build -p kubectl-ssm`) next to this test binary.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};
use ssm_operator::api::{Command, CommandInvocation};
use ssm_operator::k8s::output::CUT_MARKER;
use ssm_sim::{Invocation, Plugin, Simulator};
use testbed::TestCluster;
use tokio::io::AsyncBufReadExt;

use crate::conformance::Moto;
use crate::support::{spec, Operator, World};

const NODES: [&str; 3] = [
    "i-0bbbbbbbbbbbbbbb1",
    "i-0bbbbbbbbbbbbbbb2",
    "i-0bbbbbbbbbbbbbbb3",
];

/// The directory holding `kubectl-ssm`: the test binary's profile directory
/// (`target/debug/deps/e2e-…` → `target/debug`).
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory")
        .to_path_buf();
    assert!(
        dir.join("kubectl-ssm").is_file(),
        "{} has no kubectl-ssm: build it first (`cargo build -p kubectl-ssm`; `make e2e` does)",
        dir.display()
    );
    dir
}

/// `PATH` with the plugin's directory first, so `kubectl ssm` finds this build.
fn plugin_path() -> String {
    format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs `kubectl ssm -n <namespace> ARGS` (no terminal) with extra environment variables.
async fn kubectl_ssm_env(world: &World, args: &[&str], env: &[(&str, &str)]) -> Output {
    world
        .cluster
        .kubectl()
        .env("PATH", plugin_path())
        .envs(env.iter().copied())
        .arg("ssm")
        .args(["-n", &world.namespace])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run kubectl ssm")
}

async fn kubectl_ssm(world: &World, args: &[&str]) -> Output {
    kubectl_ssm_env(world, args, &[]).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn explain(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

pub async fn run_follows_to_the_exit_status_and_logs_show_the_output(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "kssm-run").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.set_send_default([
        Plugin::succeeding("", Duration::from_millis(800)).stdout("patched\nall good\n")
    ]);
    sim.script_instance(
        Invocation::new(NODES[1]).plugin(
            Plugin::failing_at(
                "",
                Duration::from_millis(300),
                Duration::from_millis(900),
                3,
            )
            .stdout("checking disk\n")
            .stderr("disk full\n"),
        ),
    );
    let operator = Operator::sending(&world, &sim.endpoint(), &[]);

    // 1. Success on two nodes: exit 0, one plain line per change (no terminal), the result.
    let ok_nodes = format!("{},{}", NODES[0], NODES[2]);
    let out = kubectl_ssm(
        &world,
        &[
            "run",
            "ok",
            "--instance-ids",
            &ok_nodes,
            "--",
            "echo",
            "patched",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ssmcmd/ok:"))
        .collect();
    assert!(lines.len() >= 2, "a line per change: {}", explain(&out));
    assert!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("ssmcmd/ok: Success, 2/2 done, 0 errors")),
        "{}",
        explain(&out)
    );
    assert!(
        !stderr.contains('\r'),
        "no redraws without a terminal: {stderr:?}"
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ssmcmd/ok: Success, 2/2 done, 0 errors in "),
        "{}",
        explain(&out)
    );
    // The Command it created is what the contract says `-- COMMAND...` means.
    let sent = sim.sent();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].document_name, "AWS-RunShellScript");
    let created = world
        .api_of::<Command>()
        .get("ok")
        .await
        .expect("the Command stays");
    assert_eq!(
        created.spec.parameters,
        Some([("commands".to_string(), vec!["echo patched".to_string()])].into())
    );

    // 2. One node fails: exit 1, and the JSON result says so.
    let all = NODES.join(",");
    let out = kubectl_ssm(
        &world,
        &[
            "run",
            "mixed",
            "--instance-ids",
            &all,
            "-o",
            "json",
            "--",
            "df",
            "-h",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let result: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", explain(&out)));
    assert_eq!(result["result"], "failed", "{result:#}");
    assert_eq!(result["exitCode"], 1);
    assert_eq!(result["status"], "Failed");
    assert_eq!(
        (
            result["done"].as_u64(),
            result["target"].as_u64(),
            result["errors"].as_u64()
        ),
        (Some(3), Some(3), Some(1)),
        "{result:#}"
    );
    assert_eq!(result["leftInPlace"], true);

    // 3. logs of a Command: every child, prefixed, stderr marked; --failed only the failed one.
    let out = kubectl_ssm(&world, &["logs", "ssmcmd/mixed"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        text(&out.stdout),
        format!(
            "[{a}] patched\n[{a}] all good\n[{b}] checking disk\n[{b} stderr] disk full\n[{c}] patched\n[{c}] all good\n",
            a = NODES[0],
            b = NODES[1],
            c = NODES[2]
        )
    );
    assert!(
        text(&out.stderr).contains(&format!(
            "# {} (cinv/mixed-{}): Failed, exit code 3",
            NODES[1], NODES[1]
        )),
        "{}",
        explain(&out)
    );
    let out = kubectl_ssm(&world, &["logs", "ssmcmd/mixed", "--failed"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit 0 whatever the outcome: {}",
        explain(&out)
    );
    assert_eq!(
        text(&out.stdout),
        format!(
            "[{b}] checking disk\n[{b} stderr] disk full\n",
            b = NODES[1]
        )
    );

    // 4. logs of one invocation, and as JSON.
    let child = format!("ok-{}", NODES[0]);
    let out = kubectl_ssm(&world, &["logs", &format!("cinv/{child}")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        text(&out.stdout),
        format!("[{a}] patched\n[{a}] all good\n", a = NODES[0])
    );
    let out = kubectl_ssm(&world, &["logs", "ssmcmd/mixed", "--failed", "-o", "json"]).await;
    let logs: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", explain(&out)));
    let invocations = logs["invocations"].as_array().expect("invocations");
    assert_eq!(invocations.len(), 1, "{logs:#}");
    assert_eq!(invocations[0]["instanceId"], NODES[1]);
    assert_eq!(invocations[0]["responseCode"], 3);
    assert_eq!(invocations[0]["stderr"]["text"], "disk full\n");
    assert_eq!(invocations[0]["stderr"]["cut"], false);

    // 5. wait on a finished Command answers at once with its outcome.
    let out = kubectl_ssm(&world, &["wait", "ssmcmd/ok"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let out = kubectl_ssm(&world, &["wait", &format!("cinv/mixed-{}", NODES[1])]).await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));

    // 6. Under a pseudo-terminal: a bar redrawn in place (a `\r` not followed by `\n`).
    let log = world.dir.path().join("pty.log");
    let kubectl = world.cluster.assets_dir().join("kubectl");
    let line = format!(
        "{} ssm -n {} run on-tty --instance-ids {} -- sleep 1",
        kubectl.display(),
        world.namespace,
        NODES[0]
    );
    let out = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &line])
        .arg(&log)
        .env("PATH", plugin_path())
        .env("KUBECONFIG", world.cluster.kubeconfig_path())
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run script(1)");
    let typescript = std::fs::read(&log).unwrap_or_default();
    let shown = text(&typescript);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- typescript\n{shown:?}",
        explain(&out)
    );
    let redraws = shown
        .match_indices('\r')
        .filter(|(i, _)| !shown[i + 1..].starts_with('\n'))
        .count();
    assert!(redraws >= 1, "no redraw in place on a terminal: {shown:?}");
    assert!(shown.contains("ssmcmd/on-tty"), "{shown:?}");
    assert!(
        shown.contains("ssmcmd/on-tty: Success, 1/1 done, 0 errors in"),
        "{shown:?}"
    );
    operator.stop().await;
}

pub async fn timeout_leaves_the_command_and_usage_errors_exit_2(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "kssm-timeout").await;
    // No operator runs here: the Command is never observed, as when the operator is down.
    let out = kubectl_ssm(
        &world,
        &[
            "run",
            "stuck",
            "--instance-ids",
            NODES[0],
            "--detach",
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        text(&out.stdout),
        format!("ssmcmd/stuck created in namespace {}\n", world.namespace)
    );
    let started = Instant::now();
    let out = kubectl_ssm(&world, &["wait", "ssmcmd/stuck", "--timeout", "2s"]).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(124), "{}", explain(&out));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("timed out after 2s") && stderr.contains("left in place"),
        "{}",
        explain(&out)
    );
    assert!(
        world
            .api_of::<Command>()
            .get_opt("stuck")
            .await
            .expect("get")
            .is_some(),
        "the Command was deleted"
    );

    // Ctrl-C (SIGINT) while following: exit 130, the Command left in place, and said so.
    let mut child = world
        .cluster
        .kubectl()
        .env("PATH", plugin_path())
        .args(["ssm", "-n", &world.namespace, "wait", "ssmcmd/stuck"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kubectl ssm wait");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    // The first progress line comes once the watch (and the Ctrl-C handler) runs.
    let first = tokio::time::timeout(crate::support::DEADLINE, stderr.next_line())
        .await
        .expect("a progress line in time")
        .expect("read stderr")
        .expect("a progress line");
    assert!(
        first.contains("ssmcmd/stuck: Waiting for the operator"),
        "{first}"
    );
    crate::support::signal(child.id().expect("pid"), "-INT");
    let status = tokio::time::timeout(crate::support::DEADLINE, child.wait())
        .await
        .expect("exit after SIGINT")
        .expect("wait");
    let mut rest = String::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        rest.contains("interrupted") && rest.contains("left in place"),
        "{rest}"
    );
    assert!(world
        .api_of::<Command>()
        .get_opt("stuck")
        .await
        .expect("get")
        .is_some());

    // Usage errors and the cluster refusing: exit 2, with a message.
    for (args, says) in [
        (vec!["run", "x", "--", "ls"], "--instance-ids"),
        (
            vec!["run", "x", "--instance-ids", NODES[0]],
            "nothing to run",
        ),
        (vec!["wait", "pod/x"], "ssmcmd/NAME or cinv/NAME"),
        (vec!["logs", "cinv"], "ssmcmd/NAME or cinv/NAME"),
        (vec!["wait", "ssmcmd/missing"], "not found"),
        (vec!["logs", "cinv/missing"], "not found"),
        (
            vec![
                "run",
                "bad",
                "--instance-ids",
                "not-an-instance",
                "--",
                "ls",
            ],
            "ssmcmd/bad",
        ),
        (vec!["run", "--bogus-flag"], "--bogus-flag"),
    ] {
        let out = kubectl_ssm(&world, &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", explain(&out));
        assert!(
            text(&out.stderr).contains(says),
            "{args:?} should say {says:?}: {}",
            explain(&out)
        );
    }
    // The refused Command was never created.
    assert!(world
        .api_of::<Command>()
        .get_opt("bad")
        .await
        .expect("get")
        .is_none());

    // --help for each subcommand.
    for sub in ["run", "wait", "logs"] {
        let out = kubectl_ssm(&world, &[sub, "--help"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        assert!(
            text(&out.stdout).contains("Usage: kubectl ssm"),
            "{}",
            explain(&out)
        );
    }
}

pub async fn logs_full_reads_s3_and_cloudwatch(cluster: Arc<TestCluster>) {
    let world = World::new(cluster, "kssm-full").await;
    let moto = Moto::start();
    let sdk = moto.sdk_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
    let command_id = crate::support::COMMAND_ID;
    let node = crate::support::INSTANCE_ID;

    // What SSM wrote: 30,000 characters of stdout to S3, 9,000 of stderr to CloudWatch Logs.
    let stdout: String = (0..3000).map(|i| format!("line {i:05}\n")).collect();
    let stderr: String = (0..900)
        .map(|i| format!("warn {i:04}\n"))
        .collect::<String>()
        + "end\n";
    let key = format!("out/{command_id}/{node}/awsrunShellScript/0.awsrunShellScript/stdout");
    crate::support::poll_until("moto to create the bucket", || async {
        s3.create_bucket()
            .bucket("ssm-output")
            .create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                    .build(),
            )
            .send()
            .await
            .ok()
    })
    .await;
    s3.put_object()
        .bucket("ssm-output")
        .key(&key)
        .body(stdout.clone().into_bytes().into())
        .send()
        .await
        .expect("put the stdout object");
    let group = "/ssm/run";
    let stream = format!("{command_id}/{node}/aws-runShellScript/stderr");
    logs.create_log_group()
        .log_group_name(group)
        .send()
        .await
        .expect("create log group");
    logs.create_log_stream()
        .log_group_name(group)
        .log_stream_name(&stream)
        .send()
        .await
        .expect("create log stream");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let events: Vec<_> = stderr
        .lines()
        .map(|l| {
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now)
                .message(l)
                .build()
                .expect("log event")
        })
        .collect();
    logs.put_log_events()
        .log_group_name(group)
        .log_stream_name(&stream)
        .set_log_events(Some(events))
        .send()
        .await
        .expect("put log events");

    // The invocation as the operator shows it: cut excerpts, the S3 URL, the CloudWatch group.
    world.create("big", spec(None)).await;
    let status = json!({"status": {
        "status": "Success",
        "responseCode": 0,
        "pluginName": "aws:runShellScript",
        "documentName": "AWS-RunShellScript",
        "standardOutputContent": format!("{}{CUT_MARKER}", &stdout[..3000]),
        "standardOutputUrl": format!("https://s3.eu-west-1.amazonaws.com/ssm-output/{key}"),
        "standardErrorContent": &stderr[..8000],
        "cloudWatchOutputConfig": {"cloudWatchLogGroupName": group, "cloudWatchOutputEnabled": true},
    }});
    world
        .api_of::<CommandInvocation>()
        .patch_status("big", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");

    let aws = [
        ("AWS_ENDPOINT_URL_S3", moto.endpoint.as_str()),
        ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", moto.endpoint.as_str()),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    // Without --full: the excerpts, and a hint that they are cut.
    let out = kubectl_ssm_env(&world, &["logs", "cinv/big"], &aws).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        text(&out.stderr).contains("stdout and stderr cut: --full fetches the whole text"),
        "{}",
        explain(&out)
    );
    let shown = text(&out.stdout);
    assert!(
        !shown.contains("line 02999") && !shown.contains(&format!("[{node} stderr] end")),
        "not cut?"
    );

    // With --full: every line of both, stdout from S3 and stderr from CloudWatch Logs.
    let out = kubectl_ssm_env(&world, &["logs", "cinv/big", "--full"], &aws).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let expected: String = stdout
        .lines()
        .map(|l| format!("[{node}] {l}\n"))
        .collect::<String>()
        + &stderr
            .lines()
            .map(|l| format!("[{node} stderr] {l}\n"))
            .collect::<String>();
    assert!(
        text(&out.stdout) == expected,
        "the whole text, in order ({} vs {} bytes)",
        out.stdout.len(),
        expected.len()
    );
    let out = kubectl_ssm_env(&world, &["logs", "cinv/big", "--full", "-o", "json"], &aws).await;
    let json: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", explain(&out)));
    let entry = &json["invocations"][0];
    assert_eq!(
        (
            entry["stdout"]["source"].as_str(),
            entry["stderr"]["source"].as_str()
        ),
        (Some("s3"), Some("cloudWatch"))
    );
    assert_eq!(
        entry["stdout"]["text"].as_str().map(str::len),
        Some(stdout.len())
    );

    // An object that is not there: exit 1, the excerpt still shown, the reason said.
    let gone = json!({"status": {"standardOutputUrl": "https://s3.eu-west-1.amazonaws.com/ssm-output/missing/stdout"}});
    world
        .api_of::<CommandInvocation>()
        .patch_status("big", &PatchParams::default(), &Patch::Merge(&gone))
        .await
        .expect("patch status");
    let out = kubectl_ssm_env(&world, &["logs", "cinv/big", "--full"], &aws).await;
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        text(&out.stderr).contains("s3://ssm-output/missing/stdout"),
        "{}",
        explain(&out)
    );
    assert!(
        text(&out.stdout).contains("line 00000"),
        "{}",
        explain(&out)
    );
}
