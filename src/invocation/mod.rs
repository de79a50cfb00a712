//! `CommandInvocation`: one SSM invocation mirrored into `.status`.
//!
//! - [`reconcile`]: the reconcile: the tracker's answer, mapped, its Event, the status write;
//! - [`status`]: pure, SSM answer + current status -> new status, Event note, next step;
//! - [`turns`]: whose status write goes next (final answers first, then oldest first).

pub mod reconcile;
pub mod status;
pub mod turns;

pub use reconcile::Context;
