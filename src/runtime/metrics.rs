//! Prometheus metrics (prometheus-client): reconciles, errors by kind, SSM calls by operation
//! and outcome, status writes, tracked resources by SSM status and by condition, the status
//! lag of terminal writes (see [`crate::runtime::lag`]), leadership, and resident memory.
//! Gauges that describe the caches, leadership and memory are set at scrape time.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    kind: String,
    condition: String,
}

/// The kinds the operator reconciles, as the `kind` label gives them.
pub const KINDS: [&str; 2] = ["CommandInvocation", "Command"];

/// The values of `ssm_operator_resources`' `condition` label.
pub const CONDITIONS: [&str; 4] = ["Ready", "Stalled", "Reconciling", "Unknown"];

/// Buckets of `ssm_operator_status_lag_seconds`: 0.1 s (push at its best) to 5 min (10 ×
/// the default `--poll-interval-max`), dense around the 1–5 s of polling at the defaults.
const LAG_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

fn lag_histogram() -> Histogram {
    Histogram::new(LAG_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// All metrics of the process, registered under the `ssm_operator` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    ssm_calls: Family<CallLabels, Counter>,
    status_writes: Counter,
    events: Counter,
    tracked: Family<StatusLabels, Gauge>,
    watch_errors: Counter,
    fenced_writes: Counter,
    poll_book: Gauge,
    writes_waiting: Gauge,
    ssm_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    tracked_commands: Gauge,
    push_messages: Family<PushLabels, Counter>,
    status_lag: Family<KindLabels, Histogram, fn() -> Histogram>,
    resources: Family<ResourceLabels, Gauge>,
    leader: Gauge,
    resident_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut root = Registry::default();
        // The standard name (Go's and Python's clients use it), so shared dashboards find it.
        let resident_memory = Gauge::default();
        root.register(
            "process_resident_memory_bytes",
            "Resident memory of the operator process (VmRSS)",
            resident_memory.clone(),
        );
        let registry = root.sub_registry_with_prefix("ssm_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile runs", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile runs that failed, by error kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile runs",
            reconcile_duration.clone(),
        );
        let ssm_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "ssm_calls",
            "SSM API calls by operation and outcome (success or the error reason)",
            ssm_calls.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "Status patches written",
            status_writes.clone(),
        );
        let events = Counter::default();
        registry.register("events", "Kubernetes Events recorded", events.clone());
        let tracked = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "invocations",
            "CommandInvocation resources watched, by SSM status",
            tracked.clone(),
        );
        let watch_errors = Counter::default();
        registry.register(
            "watch_errors",
            "List/watch failures of the CommandInvocation watch (RBAC, missing CRD, API server down)",
            watch_errors.clone(),
        );
        let fenced_writes = Counter::default();
        registry.register(
            "fenced_writes",
            "Status writes and Events refused because the Lease was not renewed in time",
            fenced_writes.clone(),
        );
        let poll_book = Gauge::default();
        registry.register(
            "poll_book_entries",
            "Resources the tracker follows",
            poll_book.clone(),
        );
        let writes_waiting = Gauge::default();
        registry.register(
            "status_writes_waiting",
            "CommandInvocation status writes waiting for their turn (the API server is slower than the answers come)",
            writes_waiting.clone(),
        );
        let ssm_rate = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "ssm_rate_limit",
            "SSM calls per second the process-wide budget allows now (halved on throttling)",
            ssm_rate.clone(),
        );
        let tracked_commands = Gauge::default();
        registry.register(
            "tracked_commands",
            "SSM commands the tracker polls (one ListCommandInvocations walk per round each)",
            tracked_commands.clone(),
        );
        let push_messages = Family::<PushLabels, Counter>::default();
        registry.register(
            "push_messages",
            "Push queue outcomes: hint, foreign, malformed (messages, all deleted), queue_error, delete_error",
            push_messages.clone(),
        );
        let status_lag =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(lag_histogram);
        registry.register(
            "status_lag_seconds",
            "From SSM's end of a run (executionEndDateTime, else when the operator first saw the \
             terminal answer) to the success of the status write showing it, by kind",
            status_lag.clone(),
        );
        for kind in KINDS {
            let _ = status_lag.get_or_create(&KindLabels { kind: kind.into() });
        }
        let resources = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resources",
            "Watched resources by kind and condition (Ready, Stalled, Reconciling; Unknown: none \
             of them True yet)",
            resources.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease (fence open) or runs without leader election",
            leader.clone(),
        );
        Self {
            registry: root,
            status_lag,
            resources,
            leader,
            resident_memory,
            push_messages,
            ssm_rate,
            tracked_commands,
            watch_errors,
            fenced_writes,
            poll_book,
            writes_waiting,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            ssm_calls,
            status_writes,
            events,
            tracked,
        }
    }

    /// Counts one finished reconcile run and its duration.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts one failed reconcile run.
    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: kind.to_string(),
            })
            .inc();
    }

    /// Counts one SSM call.
    pub fn ssm_call(&self, operation: &str, outcome: &str) {
        self.ssm_calls
            .get_or_create(&CallLabels {
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one status patch.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Counts one recorded Event.
    pub fn event_recorded(&self) {
        self.events.inc();
    }

    /// Counts one list/watch failure.
    pub fn watch_failed(&self) {
        self.watch_errors.inc();
    }

    /// Counts one write or Event refused by the leadership fence.
    pub fn write_fenced(&self) {
        self.fenced_writes.inc();
    }

    /// Sets the number of resources the tracker follows.
    pub fn set_poll_book(&self, entries: usize) {
        self.poll_book
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Sets the number of status writes waiting for their turn.
    pub fn set_writes_waiting(&self, waiting: usize) {
        self.writes_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Sets the number of commands the tracker polls.
    pub fn set_tracked_commands(&self, commands: usize) {
        self.tracked_commands
            .set(i64::try_from(commands).unwrap_or(i64::MAX));
    }

    /// Counts one push-queue outcome (`hint`, `foreign`, `malformed`, `queue_error`,
    /// `delete_error`).
    pub fn push_message(&self, kind: &str) {
        self.push_messages
            .get_or_create(&PushLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts node ends a walk found that no event announced (`kind="missed"`): the queue
    /// loses events, and rounds follow the polling backoff for a while.
    pub fn push_events_missed(&self, count: usize) {
        self.push_messages
            .get_or_create(&PushLabels {
                kind: "missed".to_string(),
            })
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Sets the SSM rate the budget allows now.
    pub fn set_ssm_rate(&self, per_second: f64) {
        self.ssm_rate.set(per_second);
    }

    /// Replaces the tracked-resources gauge with fresh counts per SSM status.
    pub fn set_tracked<'a>(&self, counts: impl IntoIterator<Item = (&'a str, i64)>) {
        self.tracked.clear();
        for (status, count) in counts {
            self.tracked
                .get_or_create(&StatusLabels {
                    status: status.to_string(),
                })
                .set(count);
        }
    }

    /// Records the status lag of one terminal status write of `kind`.
    pub fn status_lag(&self, kind: &str, lag: Duration) {
        self.status_lag
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(lag.as_secs_f64());
    }

    /// Replaces the resources gauge with fresh counts per (kind, condition).
    pub fn set_resources<'a>(&self, counts: impl IntoIterator<Item = (&'a str, &'a str, i64)>) {
        self.resources.clear();
        for (kind, condition, count) in counts {
            self.resources
                .get_or_create(&ResourceLabels {
                    kind: kind.into(),
                    condition: condition.into(),
                })
                .set(count);
        }
    }

    /// Sets whether this replica may lead (write) now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Sets the resident memory, in bytes.
    pub fn set_resident_memory(&self, bytes: u64) {
        self.resident_memory
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_the_readme_promises() {
        let m = Metrics::new();
        m.reconciled(Duration::from_millis(3));
        m.reconcile_failed("write_status");
        m.ssm_call("GetCommandInvocation", "Throttled");
        m.status_written();
        m.event_recorded();
        m.set_tracked([("InProgress", 3), ("Success", 2)]);
        m.watch_failed();
        m.write_fenced();
        m.set_poll_book(7);
        m.set_tracked_commands(2);
        m.set_ssm_rate(12.5);
        m.push_message("malformed");
        m.status_lag("CommandInvocation", Duration::from_millis(1500));
        m.set_resources([("Command", "Stalled", 2)]);
        m.set_leader(true);
        m.set_resident_memory(20 << 20);
        let text = m.encode().unwrap();
        for line in [
            "ssm_operator_reconciles_total 1",
            "ssm_operator_reconcile_errors_total{error=\"write_status\"} 1",
            "ssm_operator_ssm_calls_total{operation=\"GetCommandInvocation\",outcome=\"Throttled\"} 1",
            "ssm_operator_status_writes_total 1",
            "ssm_operator_events_total 1",
            "ssm_operator_invocations{status=\"InProgress\"} 3",
            "ssm_operator_reconcile_duration_seconds_count 1",
            "ssm_operator_watch_errors_total 1",
            "ssm_operator_fenced_writes_total 1",
            "ssm_operator_poll_book_entries 7",
            "ssm_operator_tracked_commands 2",
            "ssm_operator_ssm_rate_limit 12.5",
            "ssm_operator_push_messages_total{kind=\"malformed\"} 1",
            "ssm_operator_status_lag_seconds_count{kind=\"CommandInvocation\"} 1",
            "ssm_operator_status_lag_seconds_bucket{le=\"2.0\",kind=\"CommandInvocation\"} 1",
            "ssm_operator_status_lag_seconds_bucket{le=\"1.0\",kind=\"CommandInvocation\"} 0",
            "ssm_operator_status_lag_seconds_bucket{le=\"300.0\",kind=\"Command\"} 0",
            "ssm_operator_resources{kind=\"Command\",condition=\"Stalled\"} 2",
            "ssm_operator_leader 1",
            "process_resident_memory_bytes 20971520",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.set_tracked([("Success", 5)]);
        let text = m.encode().unwrap();
        assert!(
            !text.contains("status=\"InProgress\""),
            "stale statuses are dropped"
        );
    }
}
