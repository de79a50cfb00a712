//! The command line (clap): `ssm-operator crd` and `ssm-operator run` with its flags, each also
//! read from an `SSM_OPERATOR_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::runtime::telemetry::LogFormat;

/// Mirrors AWS SSM Run Command invocations into CommandInvocation resources.
#[derive(Debug, Parser)]
#[command(name = "ssm-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CRDs as YAML (both, as two documents, unless one kind is named).
    Crd {
        /// Only this kind's CRD.
        #[arg(value_enum)]
        kind: Option<CrdKind>,
    },
    /// Run the controller until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
}

/// The kinds whose CRD `ssm-operator crd` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrdKind {
    /// `commandinvocations.ssm.operator.dev`.
    Commandinvocation,
    /// `commands.ssm.operator.dev`.
    Command,
}

/// Flags of `ssm-operator run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespace to watch (repeatable; the environment variable takes a comma-separated list).
    /// Default: all namespaces.
    #[arg(
        long = "namespace",
        env = "SSM_OPERATOR_NAMESPACE",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// First poll interval after a change.
    #[arg(long, env = "SSM_OPERATOR_POLL_INTERVAL_MIN", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval_min: Duration,

    /// Ceiling of the poll backoff.
    #[arg(long, env = "SSM_OPERATOR_POLL_INTERVAL_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_interval_max: Duration,

    /// Most characters of stdout, and of stderr, kept in .status (a marker ends cut output).
    #[arg(long, env = "SSM_OPERATOR_MAX_OUTPUT_CHARS", default_value_t = 4000, value_parser = clap::value_parser!(u32).range(64..=24_000))]
    pub max_output_chars: u32,

    /// How long InvocationDoesNotExist counts as "not visible yet" after a resource is created
    /// or its spec changes (SSM is eventually consistent).
    #[arg(long, env = "SSM_OPERATOR_NOT_FOUND_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub not_found_grace: Duration,

    /// How old a resource must be before its first progress (Pending, InProgress, a transient
    /// error) is written; a final answer is written at once. Most runs end sooner, so their
    /// first status is their final one: half the status writes and Events of a fleet.
    /// `0s` writes progress at once.
    #[arg(long, env = "SSM_OPERATOR_PROGRESS_AFTER", default_value = "10s", value_parser = humantime::parse_duration)]
    pub progress_after: Duration,

    /// Delete finished resources this long after `Finished` turned True: every
    /// CommandInvocation without a controller owner and every Command whose spec sets no
    /// `ttlSecondsAfterFinished` (a Command's children go with it). Default: keep forever.
    #[arg(long, env = "SSM_OPERATOR_TTL_AFTER_FINISHED", value_parser = humantime::parse_duration)]
    pub ttl_after_finished: Option<Duration>,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "SSM_OPERATOR_HTTP_BIND", default_value = "0.0.0.0:8080")]
    pub http_bind: SocketAddr,

    /// Reconcile only while holding the Lease (run several replicas safely).
    #[arg(long, env = "SSM_OPERATOR_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "SSM_OPERATOR_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "SSM_OPERATOR_LEASE_NAME", default_value = "ssm-operator")]
    pub lease_name: String,

    /// How long a leader keeps the Lease without renewing it.
    #[arg(long, env = "SSM_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// Upper bound of one SSM HTTP attempt (a whole call, retries included, gets 3×).
    #[arg(long, env = "SSM_OPERATOR_SSM_ATTEMPT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ssm_attempt_timeout: Duration,

    /// Assume the role a Namespace names (annotation `ssm.operator.dev/role-arn`) for its
    /// resources' SSM calls.
    #[arg(long, env = "SSM_OPERATOR_NAMESPACE_ROLES")]
    pub namespace_roles: bool,

    /// SQS queue URL that an EventBridge rule fills with SSM status-change events (push).
    #[arg(long, env = "SSM_OPERATOR_SQS_QUEUE_URL")]
    pub sqs_queue_url: Option<String>,

    /// Interval of the regular rounds while the push queue delivers events (the backstop).
    #[arg(long, env = "SSM_OPERATOR_PUSH_BACKSTOP", default_value = "30s", value_parser = humantime::parse_duration)]
    pub push_backstop: Duration,

    /// SSM calls per second for the whole process (halved on throttling, recovering slowly).
    /// Default: 100, or 200 with --sqs-queue-url.
    #[arg(long, env = "SSM_OPERATOR_SSM_MAX_RATE", value_parser = parse_rate)]
    pub ssm_max_rate: Option<f64>,

    /// Reconciles at once per kind that write (status writes in flight), across all watched
    /// namespaces; up to twice as many run, so those with nothing to write never wait for writes.
    #[arg(long, env = "SSM_OPERATOR_MAX_CONCURRENT_RECONCILES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,

    /// Send Run Command for `Command` resources (off: they are Stalled with SendingDisabled).
    #[arg(long, env = "SSM_OPERATOR_SEND_COMMANDS")]
    pub send_commands: bool,

    /// Documents a `Command` may send: shell globs over the document name (repeatable, or
    /// comma-separated in the environment variable); none given: every document.
    #[arg(
        long = "allowed-documents",
        env = "SSM_OPERATOR_ALLOWED_DOCUMENTS",
        value_delimiter = ','
    )]
    pub allowed_documents: Vec<String>,

    /// Log line format.
    #[arg(
        long,
        env = "SSM_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// The SSM budget's default while the operator polls alone: rounds of List walks spend it, so it
/// sets how often a large fleet's commands are walked (on the fleet benchmark: ~13× fewer
/// calls than a 5 s waiter, lag p99 under 5 s).
pub const POLL_RATE: f64 = 100.0;
/// The default with the push queue: each node that finishes costs one read when its event
/// arrives, so the calls follow the fleet's finish rate (10,000 nodes finishing over a minute:
/// ~170 reads/s), and a budget below it queues the reads that status lag waits on.
pub const PUSH_RATE: f64 = 200.0;

impl RunArgs {
    /// The namespaces to watch, each once, in the order given (empty: all). A name given twice
    /// (`--namespace a --namespace a`, `SSM_OPERATOR_NAMESPACE=a,a`) would run two controllers
    /// over the same resources; an empty one (`a,,b`) names no namespace. Names given, but
    /// none left (`--namespace ,`), are refused: that must not widen the watch to all.
    pub fn watched_namespaces(&self) -> Result<Vec<String>, String> {
        let mut seen = std::collections::HashSet::new();
        let watched: Vec<String> = self
            .namespaces
            .iter()
            .map(|ns| ns.trim())
            .filter(|ns| !ns.is_empty() && seen.insert(*ns))
            .map(str::to_string)
            .collect();
        if watched.is_empty() && !self.namespaces.is_empty() {
            return Err(format!(
                "--namespace / SSM_OPERATOR_NAMESPACE names no namespace ({:?}); leave it unset \
                 to watch all",
                self.namespaces.join(",")
            ));
        }
        Ok(watched)
    }

    /// SSM calls per second: `--ssm-max-rate`, else [`PUSH_RATE`] with a queue, else
    /// [`POLL_RATE`].
    pub fn ssm_rate(&self) -> f64 {
        match (self.ssm_max_rate, &self.sqs_queue_url) {
            (Some(rate), _) => rate,
            (None, Some(_)) => PUSH_RATE,
            (None, None) => POLL_RATE,
        }
    }
}

/// A rate in calls per second: a finite number from 0.5 to 10,000.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if rate.is_finite() && (0.5..=10_000.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "{rate} is not a rate from 0.5 to 10000 calls per second"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_human_durations_and_repeat() {
        let args = run_args(&[
            "--namespace",
            "a",
            "--namespace",
            "b",
            "--poll-interval-min",
            "200ms",
            "--poll-interval-max",
            "1m",
            "--log-format",
            "json",
        ]);
        assert_eq!(args.namespaces, ["a", "b"]);
        assert_eq!(args.watched_namespaces().unwrap(), ["a", "b"]);
        assert_eq!(args.poll_interval_min, Duration::from_millis(200));
        assert_eq!(args.poll_interval_max, Duration::from_secs(60));
        assert_eq!(args.max_output_chars, 4000);
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(!args.leader_elect);
    }

    /// The flags of `ssm-operator run <argv>`.
    fn run_args(argv: &[&str]) -> RunArgs {
        let argv = ["ssm-operator", "run"].iter().chain(argv);
        let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("expected run")
        };
        *args
    }

    #[test]
    fn a_namespace_named_twice_or_empty_is_watched_once_or_not_at_all_and_none_is_refused() {
        let watched = |argv: &[&str]| run_args(argv).watched_namespaces();
        let twice = ["--namespace", "b", "--namespace", "a", "--namespace", "b"];
        assert_eq!(watched(&twice).unwrap(), ["b", "a"]);
        assert_eq!(watched(&["--namespace", "a,,a, b"]).unwrap(), ["a", "b"]);
        assert!(watched(&[]).unwrap().is_empty(), "all namespaces");
        let none = watched(&["--namespace", ", "]).unwrap_err();
        assert!(none.contains("names no namespace"), "{none}");
    }

    #[test]
    fn the_ssm_rate_defaults_to_100_or_200_with_push_and_must_be_sane() {
        let rate = |argv: &[&str]| run_args(argv).ssm_rate();
        assert_eq!(rate(&[]), 100.0);
        assert_eq!(rate(&["--sqs-queue-url", "https://q"]), 200.0);
        assert_eq!(
            rate(&["--sqs-queue-url", "https://q", "--ssm-max-rate", "50"]),
            50.0
        );
        assert_eq!(rate(&["--ssm-max-rate", "300"]), 300.0);
        for bad in ["0", "-1", "NaN", "inf", "lots"] {
            let parsed = Cli::try_parse_from(["ssm-operator", "run", "--ssm-max-rate", bad]);
            assert!(parsed.is_err(), "{bad}");
        }
    }

    #[test]
    fn sending_is_off_by_default_and_documents_repeat() {
        let args = run_args(&[]);
        assert!(!args.send_commands);
        assert!(args.allowed_documents.is_empty());
        let args = run_args(&[
            "--send-commands",
            "--allowed-documents",
            "AWS-RunShellScript,Team-*",
            "--allowed-documents",
            "Other",
        ]);
        assert!(args.send_commands);
        assert_eq!(
            args.allowed_documents,
            ["AWS-RunShellScript", "Team-*", "Other"]
        );
    }

    #[test]
    fn progress_is_written_once_a_resource_is_ten_seconds_old_unless_told_otherwise() {
        assert_eq!(run_args(&[]).progress_after, Duration::from_secs(10));
        let at_once = run_args(&["--progress-after", "0s"]);
        assert_eq!(at_once.progress_after, Duration::ZERO);
        let parsed = Cli::try_parse_from(["ssm-operator", "run", "--progress-after", "soon"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn ttl_after_finished_is_unset_by_default_and_a_human_duration() {
        let ttl = |argv: &[&str]| {
            let argv = ["ssm-operator", "run"].iter().chain(argv);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Run(args) => args.ttl_after_finished,
                Command::Crd { .. } => panic!("expected run"),
            })
        };
        assert_eq!(ttl(&[]).unwrap(), None, "keep forever, like a Job");
        assert_eq!(
            ttl(&["--ttl-after-finished", "7d"]).unwrap(),
            Some(Duration::from_secs(7 * 24 * 3600))
        );
        assert_eq!(
            ttl(&["--ttl-after-finished", "0s"]).unwrap(),
            Some(Duration::ZERO)
        );
        assert!(ttl(&["--ttl-after-finished", "soon"]).is_err());
    }

    #[test]
    fn out_of_range_output_bound_is_refused() {
        let err = Cli::try_parse_from(["ssm-operator", "run", "--max-output-chars", "10"]);
        assert!(err.is_err());
    }
}
