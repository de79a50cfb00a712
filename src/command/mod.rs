//! `Command`: a Run Command sent declaratively, exactly once per generation, with a child
//! `CommandInvocation` per node.
//!
//! - [`reconcile`]: the reconcile, read as its steps (send or search, track, sync children);
//! - [`context`]: what every reconcile shares, and what this process remembers per `Command`;
//! - [`send`]: pure, the exactly-once send state machine (intent, marker, search);
//! - [`status`]: pure, the `Command`'s status and conditions for each step of its run;
//! - [`children`]: pure, the child `CommandInvocation` of a `Command` for one node;
//! - [`sync`]: the children in step with SSM's nodes (create, resume, delete an earlier run's);
//! - [`teardown`]: retiring an earlier run, and cancelling before deletion (the finalizer);
//! - [`expiry`]: a finished `Command` deleted after its TTL; a TTL-only spec change is no new run.

pub mod children;
pub mod context;
mod expiry;
pub mod reconcile;
pub mod send;
pub mod status;
mod sync;
mod teardown;

pub use context::Context;
pub use teardown::FINALIZER;
