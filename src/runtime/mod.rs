//! Process plumbing.
//!
//! - [`controller`]: wiring (watches per namespace, leader election, shutdown, HTTP);
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`metrics`]: the Prometheus registry;
//! - [`lag`]: pure: the status lag a terminal status write is measured with;
//! - [`cli`]: flags and their `SSM_OPERATOR_*` environment variables;
//! - [`telemetry`]: logs (text or JSON);
//! - [`memory`]: allocator tuning at start-up.

pub mod cli;
pub mod controller;
pub mod http;
pub mod lag;
pub mod memory;
pub mod metrics;
pub mod telemetry;
