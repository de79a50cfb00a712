//! `ssm-sim`: serves the SSM Run Command simulator until SIGINT or SIGTERM.
//!
//! Prints exactly one line, `ssm-sim listening on http://127.0.0.1:PORT`, to stdout once
//! ready; everything else goes to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ssm_sim::{Scenario, Simulator};

/// A scripted AWS Systems Manager Run Command simulator (awsJson1_1 on loopback).
#[derive(Debug, Parser)]
#[command(name = "ssm-sim", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Scenario JSON file: commands to add at start-up and SendCommand's set-up (see
    /// sim/README.md).
    #[arg(long, value_name = "FILE.json")]
    scenario: Option<PathBuf>,
    /// Latency added to every response, e.g. `50ms`, `1s`, `1.5s`, `0`.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    latency: Duration,
    /// Requests per second served over all operations (token bucket, burst = the rate); the
    /// rest answer ThrottlingException. Unlimited when not given.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    rate_limit: Option<f64>,
}

/// Parses a positive, finite number of requests per second, e.g. `20` or `2.5`.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a positive number of requests per second"
        )),
    }
}

/// Parses a duration made of a decimal number and a unit: `us`, `ms`, `s` or `m`
/// (`0` needs no unit).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit (us, ms, s or m)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` is not a number"))?;
    let seconds_per_unit = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        other => return Err(format!("unknown unit `{other}` (use us, ms, s or m)")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|e| e.to_string())
}

fn load_scenario(path: &PathBuf) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Scenario::from_json(&text).map_err(|e| format!("invalid scenario {}: {e}", path.display()))
}

/// The signals that stop the server, registered up front so that a signal sent right after
/// the listening line is announced is never missed.
struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Registers handlers for SIGINT and SIGTERM (Ctrl-C elsewhere).
    fn install() -> std::io::Result<Shutdown> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Shutdown {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Shutdown {})
        }
    }

    /// Resolves when one of the signals arrives.
    async fn requested(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            // Without a handler there is nothing better to do than wait forever.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let scenario = match args.scenario.as_ref().map(load_scenario).transpose() {
        Ok(scenario) => scenario.unwrap_or_default(),
        Err(message) => {
            eprintln!("ssm-sim: {message}");
            return ExitCode::from(2);
        }
    };
    let mut shutdown = match Shutdown::install() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            eprintln!("ssm-sim: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sim = match Simulator::start_on(args.bind).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("ssm-sim: cannot listen on {}: {e}", args.bind);
            return ExitCode::FAILURE;
        }
    };
    sim.set_latency(args.latency);
    sim.set_rate_limit(args.rate_limit);
    let count = scenario.commands.len();
    sim.load_scenario(scenario);
    if count > 0 {
        eprintln!("ssm-sim: loaded {count} command(s)");
    }
    let mut stdout = std::io::stdout().lock();
    let announced =
        writeln!(stdout, "ssm-sim listening on {}", sim.endpoint()).and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(e) = announced {
        eprintln!("ssm-sim: cannot write to stdout: {e}");
        return ExitCode::FAILURE;
    }
    shutdown.requested().await;
    sim.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("20"), Ok(20.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
