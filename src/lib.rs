//! ssm-operator: mirrors AWS Systems Manager Run Command invocations into `CommandInvocation`
//! resources (`ssm.operator.dev/v1alpha1`), so `kubectl`, kstatus and GitOps tools can see them.
//!
//! Where things are decided:
//! - [`api`]: the resource types the CRD is generated from;
//! - [`ssm`]: the only code that talks to SSM (clients per region, error classes, budget);
//! - [`budget`]: pure, the process-wide SSM rate (token bucket, halved on throttling);
//! - [`tracker`]: asks SSM per command in rounds and wakes the resources whose answer changed;
//! - [`batch`]: pure, what a `ListCommandInvocations` entry says about one tracked step;
//! - [`sts`]: the only code that talks to STS (a namespace's role credentials);
//! - [`sqs`]: the only code that talks to SQS (the push queue of SSM events);
//! - [`events`]: pure, what an EventBridge message says (a hint to re-read SSM);
//! - [`roles`]: which role each namespace's resources use (a watch of Namespace annotations);
//! - [`mapping`]: pure, SSM answer + current status → new status, Event, next step;
//! - [`conditions`]: the four conditions and their transition times;
//! - [`output`]: bounding of stdout/stderr in the status;
//! - [`schedule`]: pure, backoff with jitter and each command's round clock;
//! - [`reconciler`]: the reconcile (the tracker's answer, map, Event, write);
//! - [`send`]: pure, the exactly-once send of a `Command` generation (intent, marker, search);
//! - [`command_status`]: pure, a `Command`'s status and conditions for each step of its run;
//! - [`children`]: pure, the child `CommandInvocation` of a `Command` for one node;
//! - [`command_reconciler`]: the reconcile of a `Command` (send or search, track, children,
//!   cancel on deletion);
//! - [`status_writer`]: server-side-apply status patches and Events;
//! - [`watch`]: the watch of `CommandInvocation`s (cache, errors, readiness, deletes);
//! - [`controller`]: wiring (watches per namespace, leader election, shutdown, HTTP);
//! - [`leader`], [`metrics`], [`http`], [`telemetry`], [`cli`]: process plumbing.

#![warn(missing_docs)]

pub mod api;
pub mod batch;
pub mod budget;
pub mod children;
pub mod cli;
pub mod command_reconciler;
pub mod command_status;
pub mod conditions;
pub mod controller;
pub mod events;
pub mod http;
pub mod leader;
pub mod mapping;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod reconciler;
pub mod roles;
pub mod schedule;
pub mod send;
pub mod sqs;
pub mod ssm;
pub mod status_writer;
pub mod sts;
pub mod telemetry;
pub mod tracker;
pub mod wakers;
pub mod watch;

/// The name the operator uses as field manager, Event reporter and User-Agent product.
pub const OPERATOR_NAME: &str = "ssm-operator";

/// Installs rustls' process-wide crypto provider (ring). kube and the AWS SDK link different
/// providers, and rustls refuses to guess between them, so call this once at start-up, before
/// any TLS connection. A second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Every way the operator itself can fail (SSM's answers, errors included, become status).
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// Writing `.status` failed (conflict, RBAC, API server down, ...).
    #[error("writing status of {namespace}/{name}: {source}")]
    WriteStatus {
        /// Namespace of the resource.
        namespace: String,
        /// Name of the resource.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Recording an Event failed in a way a retry may fix; the status waits for it.
    #[error("recording an Event for {namespace}/{name}: {source}")]
    RecordEvent {
        /// Namespace of the resource.
        namespace: String,
        /// Name of the resource.
        name: String,
        /// What the API server (or the connection to it) said.
        #[source]
        source: kube::Error,
    },
    /// A step of a Command's reconcile (children, cancelling) failed in a way a retry may fix.
    #[error("{0}")]
    Command(String),
    /// The status could not be turned into JSON (a bug, not a runtime condition).
    #[error("serializing status: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The object lacks something every stored object has (namespace, name, uid).
    #[error("resource has no {0}")]
    MissingObjectKey(&'static str),
    /// Kubernetes client set-up or a call outside reconcile failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Kubernetes client configuration could not be inferred.
    #[error("kubernetes configuration: {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// This process lost the Lease while reconciling; it exits so that it restarts as follower.
    #[error("lost leadership")]
    LostLeadership,
    /// A write was refused because this process may not be sure it still leads.
    #[error("not the leader (lease not renewed in time): write refused")]
    Fenced,
    /// The HTTP server could not start.
    #[error("http server on {bind}: {source}")]
    Http {
        /// The address it tried.
        bind: std::net::SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short label for the `ssm_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::WriteStatus { .. } => "write_status",
            Self::RecordEvent { .. } => "record_event",
            Self::Command(_) => "command",
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Serialize(_) => "serialize",
            Self::Kube(_) | Self::KubeConfig(_) => "kube",
            Self::Config(_) => "config",
            Self::Lease(_) | Self::LostLeadership => "lease",
            Self::Fenced => "fenced",
            Self::Http { .. } => "http",
        }
    }
}
