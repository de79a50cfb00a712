//! ssm-operator: mirrors AWS Systems Manager Run Command invocations into `CommandInvocation`
//! resources (`ssm.operator.dev/v1alpha1`), so `kubectl`, kstatus and GitOps tools can see them.
//!
//! The tree, a folder per concern (each folder's `mod.rs` says what it owns):
//! - [`api`]: the two kinds (`CommandInvocation`, `Command`), their schema and conditions;
//! - [`invocation`]: a `CommandInvocation`'s reconcile and its pure status mapping;
//! - [`command`]: a `Command`'s reconcile: the exactly-once send, its status, its children;
//! - [`tracking`]: when SSM is asked, per command in rounds, and who is woken by the answer;
//! - [`aws`]: the only code that talks to AWS (SSM, STS, SQS), the SSM budget, roles, events;
//! - [`k8s`]: the only code that changes the cluster (the fenced writer), watches, leadership;
//! - [`runtime`]: process wiring: controllers, HTTP, metrics, flags, logs, memory.

#![warn(missing_docs)]

pub mod api;
pub mod aws;
pub mod command;
pub mod invocation;
pub mod k8s;
pub mod runtime;
pub mod tracking;

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
