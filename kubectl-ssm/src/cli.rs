//! The command line (clap) and the pure step from `run`'s arguments to a `Command` spec: what
//! the user typed becomes exactly the object `kubectl apply` would have created.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ssm_operator::api::{CommandSpec, Target};

/// The document `run -- COMMAND...` sends when no `--document` is given.
pub const SHELL_DOCUMENT: &str = "AWS-RunShellScript";

/// Run an SSM Run Command on a fleet through ssm-operator, follow it, read its output.
///
/// Talks to the cluster only (kubeconfig, RBAC); `logs --full` also reads S3 or CloudWatch
/// Logs with the standard AWS chain. Exit status of `run` and `wait`: 0 when SSM says Success,
/// 1 when it ended otherwise, 2 for usage errors and the cluster refusing, 124 when --timeout
/// passed first (the Command is left in place), 130 on Ctrl-C (the Command is left in place).
#[derive(Parser, Debug)]
#[command(name = "kubectl ssm", bin_name = "kubectl ssm", version)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: Sub,
}

/// Where the cluster is: the standard kubeconfig, as kubectl reads it.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: `KUBECONFIG`, else `~/.kube/config`).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Sub {
    /// Create a `Command` and follow it until it is Finished.
    ///
    /// `kubectl ssm run NAME --instance-ids i-1,i-2 -- uptime` sends AWS-RunShellScript with
    /// the one line `uptime`; `--document` sends any other document (with `--parameter`).
    Run(RunArgs),
    /// Follow an existing `ssmcmd/NAME` or `cinv/NAME` until it is Finished.
    Wait(WaitArgs),
    /// Print the output of `cinv/NAME`, or of every child of `ssmcmd/NAME`.
    ///
    /// Each line is prefixed by the instance id (`[i-0123…]`); stderr lines by
    /// `[i-0123… stderr]`. Exit 0 when the output was shown, whatever the command's outcome.
    Logs(LogsArgs),
}

/// `--output`: text for people, json for scripts.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Arguments of `run`.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Name of the `Command` to create.
    pub name: String,
    /// The SSM document (default with `-- COMMAND...`: AWS-RunShellScript).
    #[arg(long)]
    pub document: Option<String>,
    /// Managed nodes, comma-separated (1 to 50).
    #[arg(long, value_delimiter = ',', conflicts_with = "targets")]
    pub instance_ids: Vec<String>,
    /// SSM target `KEY=V1,V2` (e.g. `tag:Role=web`); repeatable, up to 5.
    #[arg(long = "targets", value_name = "KEY=V1,V2")]
    pub targets: Vec<String>,
    /// A document parameter `KEY=VALUE`; repeat a key to give it several values.
    #[arg(long = "parameter", value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,
    /// A comment for the command (at most 80 characters).
    #[arg(long)]
    pub comment: Option<String>,
    #[command(flatten)]
    pub follow: FollowArgs,
    /// Create the `Command` and return at once, without following it.
    #[arg(long)]
    pub detach: bool,
    /// The shell command line (after `--`): AWS-RunShellScript's `commands`, words joined by
    /// spaces.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How `run` and `wait` follow.
#[derive(Args, Debug, Default, Clone)]
pub struct FollowArgs {
    /// Give up following after this long (e.g. `90s`, `10m`) and exit 124; the Command stays.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The final result as text or as one JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Arguments of `wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// `ssmcmd/NAME` (also `command/`, `commands/`) or `cinv/NAME` (also `commandinvocation/`).
    pub target: String,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// Arguments of `logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// `cinv/NAME` or `ssmcmd/NAME`.
    pub target: String,
    /// Only the invocations that failed (Failed, TimedOut, Cancelled, or stalled on an error).
    #[arg(long)]
    pub failed: bool,
    /// Fetch the whole text from S3 or CloudWatch Logs where the status holds a cut excerpt.
    #[arg(long)]
    pub full: bool,
    /// Lines for people, or one JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The two kinds `wait` and `logs` accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `Command` (`ssmcmd`).
    Command,
    /// A `CommandInvocation` (`cinv`).
    Invocation,
}

impl Kind {
    /// How `kubectl` spells the kind in messages.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Command => "ssmcmd",
            Kind::Invocation => "cinv",
        }
    }
}

/// A usage error: exit status 2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// `ssmcmd/NAME` or `cinv/NAME` (with kubectl's other spellings of the two kinds).
pub fn parse_target(text: &str) -> Result<(Kind, String), UsageError> {
    let (kind, name) = text
        .split_once('/')
        .ok_or_else(|| usage(format!("{text:?}: expected ssmcmd/NAME or cinv/NAME")))?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "ssmcmd"
        | "command"
        | "commands"
        | "command.ssm.operator.dev"
        | "commands.ssm.operator.dev" => Kind::Command,
        "cinv"
        | "commandinvocation"
        | "commandinvocations"
        | "commandinvocation.ssm.operator.dev"
        | "commandinvocations.ssm.operator.dev" => Kind::Invocation,
        other => {
            return Err(usage(format!(
                "{other:?} is not a kind kubectl ssm knows: use ssmcmd/NAME or cinv/NAME"
            )))
        }
    };
    if name.is_empty() || name.contains('/') {
        return Err(usage(format!(
            "{text:?}: expected ssmcmd/NAME or cinv/NAME"
        )));
    }
    Ok((kind, name.to_string()))
}

/// The `Command` spec `run`'s arguments describe, or why they describe none.
pub fn command_spec(args: &RunArgs) -> Result<CommandSpec, UsageError> {
    let mut parameters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &args.parameters {
        let (key, value) = p
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| usage(format!("--parameter {p:?}: expected KEY=VALUE")))?;
        parameters
            .entry(key.to_string())
            .or_default()
            .push(value.to_string());
    }
    let document = match (&args.document, args.command.is_empty()) {
        (Some(doc), true) => doc.clone(),
        (None, false) => {
            if parameters.contains_key("commands") {
                return Err(usage(
                    "give the shell command either after -- or as --parameter commands=..., not both",
                ));
            }
            parameters.insert("commands".into(), vec![args.command.join(" ")]);
            SHELL_DOCUMENT.to_string()
        }
        (Some(_), false) => {
            return Err(usage(
                "-- COMMAND... runs AWS-RunShellScript: leave out --document, or pass the \
                 document's parameters with --parameter",
            ))
        }
        (None, true) => {
            return Err(usage(
                "nothing to run: give --document DOC, or a shell command after --",
            ))
        }
    };
    let instance_ids: Vec<String> = args
        .instance_ids
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let targets = args
        .targets
        .iter()
        .map(|t| parse_target_selector(t))
        .collect::<Result<Vec<_>, _>>()?;
    let (instance_ids, targets) = match (instance_ids.is_empty(), targets.is_empty()) {
        (false, true) => (Some(instance_ids), None),
        (true, false) => (None, Some(targets)),
        (true, true) => {
            return Err(usage(
                "where to run: give --instance-ids ID,... or --targets KEY=V1,V2",
            ))
        }
        (false, false) => {
            return Err(usage(
                "--instance-ids and --targets exclude each other: give one",
            ))
        }
    };
    Ok(CommandSpec {
        document_name: document,
        parameters: (!parameters.is_empty()).then_some(parameters),
        instance_ids,
        targets,
        comment: args.comment.clone(),
        ..CommandSpec::default()
    })
}

/// `KEY=V1,V2` → an SSM target.
fn parse_target_selector(text: &str) -> Result<Target, UsageError> {
    let (key, values) = text
        .split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| usage(format!("--targets {text:?}: expected KEY=V1,V2")))?;
    Ok(Target {
        key: key.to_string(),
        values: values.split(',').map(str::to_string).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<CommandSpec, String> {
        let mut argv = vec!["kubectl-ssm", "run"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Sub::Run(run) => command_spec(&run).map_err(|e| e.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_shell_command_after_dashes_is_one_line_of_run_shell_script() {
        let spec = run(&[
            "up",
            "--instance-ids",
            "i-0aaaaaaaaaaaaaaa1,i-0aaaaaaaaaaaaaaa2",
            "--",
            "uptime",
            "-p",
        ])
        .unwrap();
        assert_eq!(spec.document_name, "AWS-RunShellScript");
        assert_eq!(
            spec.parameters,
            Some([("commands".to_string(), vec!["uptime -p".to_string()])].into())
        );
        assert_eq!(
            spec.instance_ids,
            Some(vec![
                "i-0aaaaaaaaaaaaaaa1".into(),
                "i-0aaaaaaaaaaaaaaa2".into()
            ])
        );
        assert_eq!(spec.targets, None);
    }

    #[test]
    fn a_document_with_repeated_parameters_and_targets() {
        let spec = run(&[
            "patch",
            "--document",
            "AWS-RunPatchBaseline",
            "--targets",
            "tag:Role=web,db",
            "--targets",
            "tag:Env=prod",
            "--parameter",
            "Operation=Install",
            "--parameter",
            "commands=a",
            "--parameter",
            "commands=b=c",
            "--comment",
            "nightly",
        ])
        .unwrap();
        assert_eq!(spec.document_name, "AWS-RunPatchBaseline");
        let params = spec.parameters.unwrap();
        assert_eq!(params["Operation"], ["Install"]);
        assert_eq!(params["commands"], ["a", "b=c"]);
        assert_eq!(
            spec.targets,
            Some(vec![
                Target {
                    key: "tag:Role".into(),
                    values: vec!["web".into(), "db".into()]
                },
                Target {
                    key: "tag:Env".into(),
                    values: vec!["prod".into()]
                },
            ])
        );
        assert_eq!(spec.instance_ids, None);
        assert_eq!(spec.comment.as_deref(), Some("nightly"));
    }

    #[test]
    fn usage_errors_say_what_is_missing() {
        assert!(run(&["x", "--", "ls"])
            .unwrap_err()
            .contains("--instance-ids"));
        assert!(run(&["x", "--instance-ids", "i-1"])
            .unwrap_err()
            .contains("nothing to run"));
        assert!(
            run(&["x", "--document", "D", "--instance-ids", "i-1", "--", "ls"])
                .unwrap_err()
                .contains("leave out --document")
        );
        assert!(run(&["x", "--targets", "tag:Role", "--", "ls"])
            .unwrap_err()
            .contains("KEY=V1,V2"));
        assert!(run(&[
            "x",
            "--instance-ids",
            "i-1",
            "--parameter",
            "=v",
            "--",
            "ls"
        ])
        .unwrap_err()
        .contains("KEY=VALUE"));
        // clap refuses both ways of choosing nodes at once.
        assert!(run(&["x", "--instance-ids", "i-1", "--targets", "a=b", "--", "ls"]).is_err());
        assert!(run(&[
            "x",
            "--instance-ids",
            "i-1",
            "--timeout",
            "soon",
            "--",
            "ls"
        ])
        .is_err());
    }

    #[test]
    fn targets_name_one_of_the_two_kinds() {
        assert_eq!(
            parse_target("ssmcmd/web"),
            Ok((Kind::Command, "web".into()))
        );
        assert_eq!(
            parse_target("commands/web"),
            Ok((Kind::Command, "web".into()))
        );
        assert_eq!(
            parse_target("cinv/web-i-1"),
            Ok((Kind::Invocation, "web-i-1".into()))
        );
        assert!(parse_target("pod/web").is_err());
        assert!(parse_target("web").is_err());
        assert!(parse_target("cinv/").is_err());
    }

    #[test]
    fn the_follow_timeout_is_a_human_duration() {
        let cli = Cli::try_parse_from([
            "kubectl-ssm",
            "wait",
            "cinv/a",
            "--timeout",
            "90s",
            "-o",
            "json",
        ])
        .unwrap();
        match cli.command {
            Sub::Wait(w) => {
                assert_eq!(w.follow.timeout, Some(Duration::from_secs(90)));
                assert_eq!(w.follow.output, Output::Json);
            }
            other => panic!("{other:?}"),
        }
    }
}
