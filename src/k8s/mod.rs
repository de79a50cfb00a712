//! The cluster side: the only code that changes objects in the API server, and what it reads.
//!
//! - [`writer`]: status patches and Events, behind the leadership fence;
//! - [`watch`]: the watches of both kinds (cache, errors, readiness, deletes);
//! - [`health`]: what the watches report for `/readyz` and the gauges;
//! - [`leader`]: Lease-based leader election and the fence every write asks;
//! - [`output`]: bounding of text the API server stores (output, messages, notes).

pub mod health;
pub mod leader;
pub mod output;
pub mod watch;
pub mod writer;
