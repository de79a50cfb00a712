//! The Flux `healthCheckExprs` example in `docs/gitops.md`, evaluated against real
//! CommandInvocations read from the test API server: one that succeeded, one that failed, one
//! still in progress and one no operator has observed (the CRD's defaulted status).
//!
//! The expressions are read from the document at test time, so the example users copy is the
//! one tested. They are evaluated with the `cel` crate (cel-rust) the way Flux's
//! kustomize-controller (2.5+, `fluxcd/pkg/runtime/cel`) evaluates them. What we assume about
//! Flux, from that package's `StatusEvaluator` and `Expression`:
//!
//! - The activation is the object's unstructured content: every top-level field of the object
//!   (`apiVersion`, `kind`, `metadata`, `spec`, `status`) is a variable of its own. There is no
//!   `self` (unlike CRD validation rules) and no `object` variable.
//! - Expressions are parsed, not type-checked (no declared variables), so a missing map key is
//!   an evaluation error ("no such key"), not a compile error; an evaluation error fails the
//!   health check.
//! - JSON integers reach CEL as `int` (Go's unstructured decoding gives int64), floats as
//!   `double`.
//! - Before any expression, when `status.observedGeneration` is present and differs from
//!   `metadata.generation`, the object is InProgress. Then `inProgress`, `failed` and `current`
//!   are tried in that order and the first that is true wins; if none is, InProgress.
//!
//! Flux's CEL environment also enables optional types and the strings, sets and encoders
//! extensions; the documented expressions use none of them (cel-rust has no `.?` syntax), only
//! `has`, `exists`, `filter` and `all`, which are in both.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cel::{Context, Program, Value as Cel};
use serde_json::Value as Json;
use ssm_operator::api::{CommandInvocationSpec, NOT_OBSERVED};
use ssm_sim::{Command, Invocation, Plugin, Simulator, Status};
use testbed::TestCluster;

use crate::support::{get_json, spec, Operator, OperatorOptions, World, INSTANCE_ID};

const PLUGIN: &str = "aws:runShellScript";
const SUCCEEDING_COMMAND_ID: &str = "5d0b8e2a-1c3f-4a6e-8b9d-7e1f2a3b4c51";
const FAILING_COMMAND_ID: &str = "6e1c9f3b-2d4a-4b7f-9c0e-8f2a3b4c5d62";
const RUNNING_COMMAND_ID: &str = "7f2d0a4c-3e5b-4c8a-8d1f-9a3b4c5d6e73";

/// The three expressions of the CommandInvocation entry of the example.
#[derive(Debug)]
struct HealthCheckExprs {
    in_progress: String,
    failed: String,
    current: String,
}

/// kstatus' verdict, as Flux computes it from the expressions.
#[derive(Debug, PartialEq, Eq)]
enum Health {
    InProgress,
    Failed,
    Current,
}

/// The fenced ```yaml blocks of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim() == "```yaml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Reads the `healthCheckExprs` entry for CommandInvocations from `docs/gitops.md`.
fn documented_exprs() -> HealthCheckExprs {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/gitops.md");
    let markdown =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let blocks: Vec<String> = yaml_blocks(&markdown)
        .into_iter()
        .filter(|b| b.contains("healthCheckExprs"))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "expected one yaml block with healthCheckExprs in {}: {blocks:#?}",
        path.display()
    );
    let kustomization: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&blocks[0]).expect("the healthCheckExprs block is YAML");
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "{kustomization:?}"
    );
    let entries = kustomization["spec"]["healthCheckExprs"]
        .as_sequence()
        .expect("spec.healthCheckExprs is a list");
    let entry = entries
        .iter()
        .find(|e| {
            e["apiVersion"].as_str() == Some("ssm.operator.dev/v1alpha1")
                && e["kind"].as_str() == Some("CommandInvocation")
        })
        .unwrap_or_else(|| panic!("no CommandInvocation entry in {entries:?}"));
    let expr = |key: &str| {
        entry[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} expression in {entry:?}"))
            .to_string()
    };
    HealthCheckExprs {
        in_progress: expr("inProgress"),
        failed: expr("failed"),
        current: expr("current"),
    }
}

/// JSON as Flux hands it to CEL: integers as `int`, other numbers as `double`.
fn to_cel(json: &Json) -> Cel {
    match json {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().expect("a JSON number")),
        },
        Json::String(s) => Cel::String(Arc::new(s.clone())),
        Json::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(fields) => Cel::from(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<HashMap<String, Cel>>(),
        ),
    }
}

/// Evaluates `expr` with the object's top-level fields as variables, as Flux does.
fn evaluate(expr: &str, object: &Json) -> Result<bool, String> {
    let program = Program::compile(expr).map_err(|e| format!("parse: {e}"))?;
    let mut context = Context::default();
    for (field, value) in object.as_object().expect("an object") {
        context.add_variable_from_value(field.clone(), to_cel(value));
    }
    match program.execute(&context) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("not a bool: {other:?}")),
        Err(e) => Err(format!("evaluation: {e}")),
    }
}

/// Flux's generation rule: true when `status.observedGeneration` is present and differs from
/// `metadata.generation`, which makes the object InProgress before any expression runs.
fn generation_rule_applies(object: &Json) -> bool {
    match (
        object["status"]["observedGeneration"].as_i64(),
        object["metadata"]["generation"].as_i64(),
    ) {
        (Some(observed), Some(generation)) => observed != generation,
        _ => false,
    }
}

/// The health Flux computes: the generation rule, then inProgress, failed, current.
fn flux_health(exprs: &HealthCheckExprs, object: &Json) -> Result<Health, String> {
    if generation_rule_applies(object) {
        return Ok(Health::InProgress);
    }
    for (expr, health) in [
        (&exprs.in_progress, Health::InProgress),
        (&exprs.failed, Health::Failed),
        (&exprs.current, Health::Current),
    ] {
        if evaluate(expr, object).map_err(|e| format!("{expr}: {e}"))? {
            return Ok(health);
        }
    }
    Ok(Health::InProgress)
}

/// What each expression gives on `object`; all three must evaluate.
struct Verdicts {
    in_progress: bool,
    failed: bool,
    current: bool,
}

fn verdicts(exprs: &HealthCheckExprs, what: &str, object: &Json) -> Verdicts {
    let eval = |name: &str, expr: &str| {
        evaluate(expr, object).unwrap_or_else(|e| {
            panic!("{name} expression {expr:?} on the {what} object: {e}\nobject: {object:#}")
        })
    };
    Verdicts {
        in_progress: eval("inProgress", &exprs.in_progress),
        failed: eval("failed", &exprs.failed),
        current: eval("current", &exprs.current),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn spec_for(command_id: &str) -> CommandInvocationSpec {
    CommandInvocationSpec {
        ttl_seconds_after_finished: None,
        command_id: command_id.into(),
        ..spec(None)
    }
}

/// The documented expressions give the expected verdicts on real objects: a succeeded one is
/// Current, a failed one Failed, a running one InProgress, and on a not-yet-observed one
/// (`status: {observedGeneration: -1}`) they evaluate without error to neither Current nor
/// Failed.
pub async fn health_check_exprs_judge_real_objects(cluster: Arc<TestCluster>) {
    let exprs = documented_exprs();

    // Never observed: a namespace no operator watches, read with the CRD's default status.
    let unwatched = World::new(cluster.clone(), "flux-cel-unwatched").await;
    unwatched.create("unobserved", spec(None)).await;
    let unobserved = get_json(&unwatched, "unobserved").await;
    assert_eq!(
        unobserved["status"],
        serde_json::json!({ "observedGeneration": NOT_OBSERVED }),
        "{unobserved:#}"
    );

    let world = World::new(cluster, "flux-cel").await;
    let sim = Simulator::start().await.expect("simulator");
    sim.add_command(
        Command::new(SUCCEEDING_COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(ms(200), Status::InProgress)
                    .step(ms(800), Status::Success),
            ),
        ),
    );
    sim.add_command(
        Command::new(FAILING_COMMAND_ID).invocation(
            Invocation::new(INSTANCE_ID).plugin(
                Plugin::new(PLUGIN)
                    .step(ms(200), Status::InProgress)
                    .step_with(ms(800), Status::Failed, "Failed", 1),
            ),
        ),
    );
    // In progress for far longer than the scenario runs.
    sim.add_command(Command::new(RUNNING_COMMAND_ID).invocation(
        Invocation::new(INSTANCE_ID).plugin(Plugin::new(PLUGIN).step(ms(200), Status::InProgress)),
    ));
    world
        .create("succeeded", spec_for(SUCCEEDING_COMMAND_ID))
        .await;
    world.create("failed", spec_for(FAILING_COMMAND_ID)).await;
    world.create("running", spec_for(RUNNING_COMMAND_ID)).await;
    let operator = Operator::start(
        &world,
        &OperatorOptions {
            ssm_endpoint: sim.endpoint(),
            ..OperatorOptions::default()
        },
    );
    world.wait_status("succeeded", "Success").await;
    world.wait_status("failed", "Failed").await;
    world.wait_status("running", "InProgress").await;
    let succeeded = get_json(&world, "succeeded").await;
    let failed = get_json(&world, "failed").await;
    let running = get_json(&world, "running").await;
    operator.stop().await;

    // The operator observed these three: the generation rule lets the expressions decide.
    for (what, object) in [
        ("succeeded", &succeeded),
        ("failed", &failed),
        ("running", &running),
    ] {
        assert!(
            !generation_rule_applies(object),
            "{what}: observedGeneration differs from generation: {object:#}"
        );
    }

    let v = verdicts(&exprs, "succeeded", &succeeded);
    assert!(v.current && !v.failed && !v.in_progress, "{succeeded:#}");
    assert_eq!(flux_health(&exprs, &succeeded), Ok(Health::Current));

    let v = verdicts(&exprs, "failed", &failed);
    assert_eq!(failed["status"]["responseCode"], 1, "{failed:#}");
    assert!(v.failed && !v.current && !v.in_progress, "{failed:#}");
    assert_eq!(flux_health(&exprs, &failed), Ok(Health::Failed));

    let v = verdicts(&exprs, "running", &running);
    assert!(v.in_progress && !v.current && !v.failed, "{running:#}");
    assert_eq!(flux_health(&exprs, &running), Ok(Health::InProgress));

    // Flux's generation rule answers InProgress first here, but the expressions must not
    // depend on it: they evaluate on the defaulted status and claim neither outcome.
    let v = verdicts(&exprs, "never observed", &unobserved);
    assert!(!v.current && !v.failed, "{unobserved:#}");
    assert!(generation_rule_applies(&unobserved), "{unobserved:#}");
    assert_eq!(flux_health(&exprs, &unobserved), Ok(Health::InProgress));
    // Without the generation rule too (an operator that wrote a status without conditions,
    // or a Flux that ran the expressions first), nothing would pass the health check.
    let mut observed_without_conditions = unobserved.clone();
    observed_without_conditions["status"]["observedGeneration"] =
        observed_without_conditions["metadata"]["generation"].clone();
    assert_eq!(
        flux_health(&exprs, &observed_without_conditions),
        Ok(Health::InProgress),
        "{observed_without_conditions:#}"
    );
}
