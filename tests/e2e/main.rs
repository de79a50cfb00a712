//! End-to-end suite: a real etcd + kube-apiserver (started once for the whole binary, envtest
//! style, from `KUBEBUILDER_ASSETS`), the project's SSM simulator or moto's SSM server, and the
//! real `ssm-operator` binary, checked the way users see it (`kubectl`, conditions, Events).
//!
//! libtest-mimic gives libtest's CLI and output (filters, `--list`, `N passed; M failed`) while
//! letting the harness own the cluster's lifetime: it is torn down after the last scenario,
//! even when scenarios panic.

mod chart;
mod commands;
mod conformance;
mod expiry;
mod faults_kube;
mod faults_ssm;
mod fencing;
mod flux_cel;
mod gitops;
mod history;
mod kubectl_ssm;
mod kubectl_ux;
mod leader;
mod lifecycle;
mod monitoring;
mod multi_step;
mod push;
mod roles;
mod support;
mod validation;
mod watch_health;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Trial};
use testbed::TestCluster;

/// A scenario: an async test given the shared cluster.
type Scenario = fn(Arc<TestCluster>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! scenarios {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((
            concat!(stringify!($module), "::", stringify!($name)),
            (|cluster| Box::pin($module::$name(cluster))) as Scenario,
        )),*]
    };
}

fn all_scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        lifecycle::success_with_outputs_urls_and_cloudwatch,
        lifecycle::failed_with_exit_code_and_stderr,
        lifecycle::timed_out_execution,
        lifecycle::cancelled_via_cancelling,
        lifecycle::delayed_then_success,
        lifecycle::invocation_not_found_then_appears,
        lifecycle::invocation_never_found_stalls_and_is_rechecked_rarely,
        lifecycle::wrong_plugin_name_stalls_without_a_hot_loop,
        lifecycle::throttling_storm_still_ends_right,
        lifecycle::two_plugins_of_one_command_are_tracked_separately,
        lifecycle::full_size_output_is_stored_bounded,
        lifecycle::operator_killed_mid_flight_and_restarted_ends_right,
        lifecycle::spec_change_is_tracked_again_with_new_generation,
        lifecycle::finished_resources_are_never_polled_again,
        validation::bad_specs_are_refused_by_the_api_server,
        kubectl_ux::get_columns_describe_events_and_wait,
        kubectl_ux::metrics_health_and_readiness_are_served,
        conformance::moto_speaks_the_same_protocol,
        conformance::moto_sends_a_command,
        chart::helm_template_applies_with_server_side_dry_run,
        chart::helm_install_upgrade_uninstall,
        leader::only_the_leader_reconciles_and_a_follower_takes_over,
        watch_health::missing_rbac_is_reported_and_recovers_when_granted,
        faults_kube::apiserver_outage_mid_flight_loses_nothing,
        faults_kube::operator_killed_during_a_burst_of_status_writes,
        gitops::helm_wait_returns_only_once_the_invocation_succeeded,
        gitops::helm_wait_fails_when_the_command_fails,
        gitops::helm_wait_times_out_while_the_operator_is_stopped,
        gitops::kubectl_wait_on_ready_and_finished,
        gitops::helm_wait_gates_on_a_command_that_succeeds,
        gitops::helm_wait_fails_when_a_command_fails,
        flux_cel::health_check_exprs_judge_real_objects,
        faults_ssm::ssm_5xx_storms_drops_and_slow_replies_end_right,
        faults_ssm::leader_paused_with_reconciles_in_flight_writes_nothing_after_resuming,
        fencing::a_fenced_replica_on_a_new_generation_changes_nothing,
        roles::each_namespace_is_asked_with_its_own_identity,
        roles::a_role_that_cannot_be_assumed_stalls_only_its_namespace,
        roles::short_lived_credentials_are_refreshed,
        push::status_arrives_within_a_second_with_polling_at_its_backstop,
        push::a_command_follows_its_events_not_its_poll,
        push::lost_events_only_slow_things_down,
        push::a_poisoned_message_does_not_block_the_queue,
        push::moto_sqs_speaks_the_same_protocol,
        commands::send_children_and_success_with_counts,
        commands::partial_failure_stalls_with_the_counts,
        commands::targets_resolve_over_time,
        commands::operator_killed_after_ssm_accepted_sends_nothing_twice,
        commands::refusals_stall_without_a_second_send,
        commands::sending_is_off_by_default,
        commands::delete_while_running_cancels_the_run,
        commands::spec_change_runs_again_exactly_once,
        multi_step::a_two_step_document_is_mirrored_per_node_as_a_whole,
        monitoring::prometheus_sees_the_storm_the_lag_and_every_dashboard_query,
        kubectl_ssm::run_follows_to_the_exit_status_and_logs_show_the_output,
        kubectl_ssm::timeout_leaves_the_command_and_usage_errors_exit_2,
        kubectl_ssm::logs_full_reads_s3_and_cloudwatch,
        expiry::an_invocation_expires_after_its_ttl_and_a_ttl_change_is_honoured,
        expiry::a_command_deleted_by_its_ttl_loses_its_children_through_the_garbage_collector,
        expiry::a_ttl_change_on_a_finished_command_sends_nothing_and_is_honoured,
        expiry::a_gitops_tracked_command_is_not_deleted_without_the_opt_in,
        expiry::deleting_a_namespace_cancels_its_running_commands_and_the_namespace_goes,
        expiry::with_the_operator_stopped_a_namespace_waits_on_the_finalizer,
        expiry::an_expired_object_is_deleted_only_by_its_uid,
    ]
}

fn main() -> ExitCode {
    ssm_operator::install_crypto_provider();
    let mut args = Arguments::from_args();
    // Scenarios mostly wait on timelines, not the CPU.
    args.test_threads.get_or_insert(6);

    let scenarios = all_scenarios();
    if args.list {
        let trials = scenarios
            .into_iter()
            .map(|(name, _)| Trial::test(name, || Ok(())));
        return libtest_mimic::run(&args, trials.collect()).exit_code();
    }

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cluster = match runtime.block_on(TestCluster::start()) {
        Ok(cluster) => Arc::new(cluster),
        Err(error) => {
            eprintln!("e2e: cannot start the test API server: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = runtime.block_on(install_crd(&cluster)) {
        eprintln!("e2e: cannot install the CRD: {error}");
        return ExitCode::FAILURE;
    }

    let trials = scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let cluster = cluster.clone();
            let without_moto = (name.starts_with("conformance::")
                || name == "push::moto_sqs_speaks_the_same_protocol"
                || name == "kubectl_ssm::logs_full_reads_s3_and_cloudwatch")
                && conformance::moto_server().is_none()
                && std::env::var_os("SSM_OPERATOR_REQUIRE_MOTO").is_none();
            Trial::test(name, move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(scenario(cluster));
                Ok(())
            })
            .with_ignored_flag(without_moto)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(cluster);
    conclusion.exit_code()
}

/// Installs the shipped CRD files with kubectl, as a user would, and waits until they are
/// served.
async fn install_crd(cluster: &TestCluster) -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for args in [
        vec!["apply", "-f", dir.to_str().unwrap_or_default()],
        vec![
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/commandinvocations.ssm.operator.dev",
            "crd/commands.ssm.operator.dev",
        ],
    ] {
        let out = cluster
            .kubectl()
            .args(&args)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}
