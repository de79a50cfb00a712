//! `Command`: a Run Command sent declaratively, exactly once per generation, with a child
//! `CommandInvocation` per node.
//!
//! - [`reconcile`]: the reconcile (send or search, track, children, cancel on deletion);
//! - [`send`]: pure, the exactly-once send state machine (intent, marker, search);
//! - [`status`]: pure, the `Command`'s status and conditions for each step of its run;
//! - [`children`]: pure, the child `CommandInvocation` of a `Command` for one node.

pub mod children;
pub mod reconcile;
pub mod send;
pub mod status;
