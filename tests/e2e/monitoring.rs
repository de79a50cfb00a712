//! Monitoring end to end: a real Prometheus (Debian's 2.42, unpacked by `hack/test-deps.sh`
//! into `.cache/prometheus`) on 127.0.0.1 scrapes the real operator every second and loads
//! the alert rules rendered out of the chart, while the SSM simulator throttles. Checked
//! through Prometheus' HTTP API, as Grafana and Alertmanager see it:
//! - the `SsmOperatorSsmThrottled` expression returns a series during the storm (and the alert
//!   is pending) and none once the storm is over;
//! - `ssm_operator_status_lag_seconds` counts every terminal status write, of both kinds;
//! - every query of the chart's Grafana dashboard returns data;
//! - the chart's seven rules evaluate on real data without error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kube::api::PostParams;
use serde_json::Value;
use ssm_operator::api::{Command as SsmCommand, CommandSpec};
use ssm_sim::{Command, Invocation, Plugin, Simulator};
use testbed::TestCluster;

use crate::support::{free_port, poll_until, spec, Operator, OperatorOptions, World, COMMAND_ID};

const PLUGIN: &str = "aws:runShellScript";
/// The CommandInvocations created directly (one command, this many nodes).
const NODES: [&str; 4] = [
    "i-0bbbbbbbbbbbbbbb1",
    "i-0bbbbbbbbbbbbbbb2",
    "i-0bbbbbbbbbbbbbbb3",
    "i-0bbbbbbbbbbbbbbb4",
];
/// A node of another command that runs on after the storm, so that the operator keeps
/// calling SSM (successfully) while the throttled share drops out of the window.
const LONG_NODE: &str = "i-0bbbbbbbbbbbbbbb9";
const LONG_COMMAND_ID: &str = "0b7c8d9e-1f2a-4b3c-8d4e-5f6a7b8c9d0e";
/// The nodes of the one `Command` the operator sends (each gets a child CommandInvocation).
const COMMAND_NODES: [&str; 2] = ["i-0ccccccccccccccc1", "i-0ccccccccccccccc2"];
/// The rate window the rules are rendered with: long enough for a few 1 s scrapes, short
/// enough that the storm leaves it within the scenario.
const RATE_WINDOW: &str = "10s";
/// What `$__rate_interval` stands for in the dashboard's queries here.
const DASHBOARD_RATE_INTERVAL: &str = "30s";

/// The Prometheus binary: `$PROMETHEUS`, else the one `hack/test-deps.sh` unpacked.
fn prometheus_bin() -> PathBuf {
    let bin = std::env::var_os("PROMETHEUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/prometheus/bin/prometheus"),
        PathBuf::from,
    );
    assert!(
        bin.is_file(),
        "{} missing: run `bash hack/test-deps.sh` (it unpacks Debian's prometheus package)",
        bin.display()
    );
    bin
}

/// A Prometheus process on a loopback port; killed on drop, its log printed if the test failed.
struct Prometheus {
    child: Option<Child>,
    log: PathBuf,
    url: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second as job `ssm-operator`,
    /// with the rule file `rules`, evaluated every second.
    fn start(dir: &Path, target: &str, rules: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let text = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: ssm-operator\n    static_configs: [{{targets: [{target:?}]}}]\n",
            rules = rules.display().to_string(),
        );
        std::fs::write(&config, text).expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).expect("log file");
        let port = free_port();
        let child = StdCommand::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child: Some(child),
            log,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// GETs `path` with the URL-encoded `query` parameters; `None` unless Prometheus answered
    /// `status: success`.
    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<Value> {
        let mut command = tokio::process::Command::new("curl");
        command.args(["-s", "--max-time", "5", "--get"]);
        for (key, value) in params {
            command.args(["--data-urlencode", &format!("{key}={value}")]);
        }
        let out = command
            .arg(format!("{}{path}", self.url))
            .output()
            .await
            .ok()?;
        let body: Value = serde_json::from_slice(&out.stdout).ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// The result vector of an instant query now (`None` while Prometheus cannot answer).
    async fn query(&self, expr: &str) -> Option<Vec<Value>> {
        let data = self.get("/api/v1/query", &[("query", expr)]).await?;
        data["result"].as_array().cloned()
    }

    /// Polls `expr` until `done` holds for its result, and returns that result.
    async fn wait_for(
        &self,
        what: &str,
        expr: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        poll_until(&format!("{what} ({expr})"), || async {
            self.query(expr).await.filter(|r| done(r))
        })
        .await
    }

    /// Waits until `expr` returns a single sample, and returns its value.
    async fn value_of(&self, what: &str, expr: &str, done: impl Fn(f64) -> bool) -> f64 {
        let result = self
            .wait_for(what, expr, |r| r.len() == 1 && done(sample(&r[0])))
            .await;
        sample(&result[0])
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- prometheus log ({}) ---\n{}",
                    self.log.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

/// The value of one sample of an instant vector (`NaN` when it is not a number).
fn sample(entry: &Value) -> f64 {
    entry["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The chart's PrometheusRule rendered by helm (selector `job="ssm-operator"`, the scrape job
/// below, and a short rate window), written as a Prometheus rule file; returns the expression
/// of each alert by name.
async fn chart_rules(world: &World, path: &Path) -> Vec<(String, String)> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/ssm-operator");
    let out = world
        .cluster
        .helm()
        .args(["template", "ssm", chart.to_str().expect("UTF-8 path")])
        .args(["--namespace", &world.namespace])
        .args(["--set", "monitoring.prometheusRule.enabled=true"])
        .args(["--set-string", "monitoring.selector=job=\"ssm-operator\""])
        .args([
            "--set",
            &format!("monitoring.prometheusRule.rateWindow={RATE_WINDOW}"),
        ])
        .args(["--show-only", "templates/prometheusrule.yaml"])
        .output()
        .await
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rule: Value = serde_yaml_ng::from_slice(&out.stdout).expect("PrometheusRule YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    let groups = &rule["spec"]["groups"];
    let file = serde_yaml_ng::to_string(&serde_json::json!({ "groups": groups })).expect("YAML");
    std::fs::write(path, file).expect("write rules");
    groups[0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().expect("alert name").to_string();
            let expr = r["expr"].as_str().expect("expr").to_string();
            (name, expr)
        })
        .collect()
}

/// Every query of the chart's dashboard, with its panel title and the variables filled in as
/// "All" gives them.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("charts/ssm-operator/dashboards/ssm-operator.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$namespace", ".*")
                .replace("$job", ".*")
                .replace("$__rate_interval", DASHBOARD_RATE_INTERVAL);
            let title = format!(
                "{} {}",
                panel["title"].as_str().unwrap_or_default(),
                target["refId"].as_str().unwrap_or_default()
            );
            queries.push((title, expr));
        }
    }
    queries
}

pub async fn prometheus_sees_the_storm_the_lag_and_every_dashboard_query(
    cluster: Arc<TestCluster>,
) {
    let world = World::new(cluster, "monitoring").await;
    let sim = Simulator::start().await.expect("simulator");
    let rules = world.dir.path().join("rules.yaml");
    let alerts = chart_rules(&world, &rules).await;
    assert_eq!(alerts.len(), 7, "{alerts:#?}");
    let throttled = alerts
        .iter()
        .find(|(name, _)| name == "SsmOperatorSsmThrottled")
        .map(|(_, expr)| expr.clone())
        .expect("SsmOperatorSsmThrottled");

    // The storm: SSM answers (almost) everything with ThrottlingException from the start.
    sim.set_rate_limit(Some(0.01));
    sim.add_command(NODES.iter().fold(Command::new(COMMAND_ID), |c, node| {
        c.invocation(Invocation::new(*node).plugin(Plugin::succeeding(PLUGIN, ms(1500))))
    }));
    sim.set_send_default([Plugin::succeeding("", ms(1500))]);
    let lease = "ssm-operator-monitoring";
    let args = [
        "--send-commands",
        "--leader-elect",
        "--lease-namespace",
        &world.namespace,
        "--lease-name",
        lease,
        "--lease-duration",
        "15s",
    ];
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            args: args.map(String::from).to_vec(),
            env: vec![("POD_NAME".into(), "operator-0".into())],
        },
    );
    let target = operator.http.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(world.dir.path(), &target, &rules);

    for (i, node) in NODES.iter().enumerate() {
        let mut spec = spec(None);
        spec.instance_id = node.to_string();
        world.create(&format!("node-{i}"), spec).await;
    }
    let command = CommandSpec {
        document_name: "AWS-RunShellScript".into(),
        parameters: Some([("commands".to_string(), vec!["echo hi".to_string()])].into()),
        instance_ids: Some(COMMAND_NODES.iter().map(|s| s.to_string()).collect()),
        ..CommandSpec::default()
    };
    world
        .api_of::<SsmCommand>()
        .create(&PostParams::default(), &SsmCommand::new("fleet", command))
        .await
        .expect("create Command");

    // During the storm the alert's expression returns a series, and the rule Prometheus
    // loaded from the chart is pending (it fires after throttledFor).
    let during = prometheus
        .wait_for("the throttle ratio during the storm", &throttled, |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(during[0]["metric"]["job"], "ssm-operator", "{during:?}");
    assert!(sample(&during[0]) > 0.1, "{during:?}");
    prometheus
        .wait_for(
            "SsmOperatorSsmThrottled pending",
            "ALERTS{alertname=\"SsmOperatorSsmThrottled\",alertstate=\"pending\"}",
            |r| r.len() == 1,
        )
        .await;
    assert!(sim.throttled() > 0);

    // The storm ends; every resource finishes. A run of another command starts now and goes
    // on for 30 s.
    sim.set_rate_limit(None);
    sim.add_command(
        Command::new(LONG_COMMAND_ID)
            .invocation(Invocation::new(LONG_NODE).plugin(Plugin::succeeding(PLUGIN, ms(30_000)))),
    );
    let mut long = spec(None);
    long.command_id = LONG_COMMAND_ID.to_string();
    long.instance_id = LONG_NODE.to_string();
    world.create("long", long).await;
    for i in 0..NODES.len() {
        world
            .wait_condition(&format!("node-{i}"), "Finished", "True")
            .await;
    }
    world
        .wait_on::<SsmCommand>("fleet", "Finished=True", |c| {
            c.condition("Finished").is_some_and(|c| c.status == "True")
        })
        .await;
    let children = world
        .api()
        .list(&kube::api::ListParams::default().labels("ssm.operator.dev/command=fleet"))
        .await
        .expect("list children")
        .items;
    assert_eq!(children.len(), COMMAND_NODES.len());
    for child in &children {
        let name = kube::ResourceExt::name_any(child);
        world.wait_condition(&name, "Finished", "True").await;
    }

    // After the storm: no series once the window holds no throttled call, while the
    // operator goes on calling SSM (for the long run) with success.
    let succeeding = format!(
        "sum(rate(ssm_operator_ssm_calls_total{{outcome=\"success\"}}[{RATE_WINDOW}])) > 0"
    );
    poll_until(
        "no throttle ratio after the storm, with calls succeeding",
        || async {
            let quiet = prometheus.query(&throttled).await?.is_empty();
            let calls = !prometheus.query(&succeeding).await?.is_empty();
            (quiet && calls).then_some(())
        },
    )
    .await;
    let long = world.api().get("long").await.expect("get long");
    assert!(
        long.condition("Finished")
            .is_none_or(|c| c.status != "True"),
        "the long run still goes on: the window is quiet because calls succeed"
    );
    world.wait_condition("long", "Finished", "True").await;

    // Every terminal status write was measured, once: one per CommandInvocation (the direct
    // ones and the Command's children) and one for the Command.
    let invocations = (NODES.len() + 1 + COMMAND_NODES.len()) as f64;
    prometheus
        .value_of(
            "a lag count for every CommandInvocation",
            "ssm_operator_status_lag_seconds_count{kind=\"CommandInvocation\"}",
            |v| v == invocations,
        )
        .await;
    prometheus
        .value_of(
            "a lag count for the Command",
            "ssm_operator_status_lag_seconds_count{kind=\"Command\"}",
            |v| v == 1.0,
        )
        .await;
    let metrics = operator.metrics().await;
    assert!(
        metrics.contains(&format!(
            "ssm_operator_status_lag_seconds_count{{kind=\"CommandInvocation\"}} {invocations}"
        )),
        "{metrics}"
    );
    // The storm held the final answers back: their lag shows it (runs ended at 1.5 s).
    let lag_sum = prometheus
        .value_of(
            "the lag sum",
            "ssm_operator_status_lag_seconds_sum{kind=\"CommandInvocation\"}",
            |v| v > 0.0,
        )
        .await;
    assert!(lag_sum > 0.0);
    prometheus
        .value_of(
            "every CommandInvocation Ready",
            "ssm_operator_resources{kind=\"CommandInvocation\",condition=\"Ready\"}",
            |v| v == invocations,
        )
        .await;
    prometheus
        .value_of("the leader", "ssm_operator_leader", |v| v == 1.0)
        .await;

    // Every query of the dashboard returns data.
    for (panel, expr) in dashboard_queries() {
        prometheus
            .wait_for(&format!("data for dashboard panel {panel}"), &expr, |r| {
                !r.is_empty()
            })
            .await;
    }

    // The chart's rules all evaluated on this data without error.
    let groups = poll_until("every rule evaluated", || async {
        let data = prometheus.get("/api/v1/rules", &[]).await?;
        let rules: Vec<Value> = data["groups"][0]["rules"].as_array()?.clone();
        (rules.len() == 7 && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    })
    .await;
    assert_eq!(groups.len(), 7);
    eprintln!(
        "monitoring: storm throttle ratio {:.2}, SSM throttled {} of {} requests; lag count \
         {invocations} CommandInvocations + 1 Command, CommandInvocation lag sum {lag_sum:.2} s; \
         {} dashboard queries returned data",
        sample(&during[0]),
        sim.throttled(),
        sim.total_calls(),
        dashboard_queries().len()
    );
    drop(prometheus);
    operator.stop().await;
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
