//! Pure: the output `logs` shows. One [`Entry`] per invocation (its status's excerpts, or the
//! whole text `--full` fetched), formatted as lines prefixed by the instance id, stderr lines
//! marked; whether an excerpt was cut (the operator's marker, or SSM's own limits).

use serde::Serialize;
use ssm_operator::api::CommandInvocation;
use ssm_operator::k8s::output::CUT_MARKER;

use crate::follow::{invocation_state, State};

/// SSM keeps the first 24,000 characters of stdout in `StandardOutputContent`.
pub const SSM_STDOUT_LIMIT: usize = 24_000;
/// SSM keeps the first 8,000 characters of stderr in `StandardErrorContent`.
pub const SSM_STDERR_LIMIT: usize = 8_000;

/// Which of the two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` / `stderr`, as SSM names its S3 objects and log streams.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn ssm_limit(self) -> usize {
        match self {
            Stream::Stdout => SSM_STDOUT_LIMIT,
            Stream::Stderr => SSM_STDERR_LIMIT,
        }
    }
}

/// Where an entry's text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The resource's status (an excerpt, maybe cut).
    Status,
    /// The S3 object behind `standardOutputUrl` / `standardErrorUrl`.
    S3,
    /// CloudWatch Logs.
    CloudWatch,
}

/// One stream of one invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Text {
    /// The text.
    pub text: String,
    /// Whether it is a cut excerpt (only ever true for [`Source::Status`]).
    pub cut: bool,
    /// Where it came from.
    pub source: Source,
}

/// The output of one invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The `CommandInvocation`'s name.
    pub name: String,
    /// The managed node.
    pub instance_id: String,
    /// SSM's status, if any.
    pub status: Option<String>,
    /// The exit code, if SSM reported one.
    pub response_code: Option<i32>,
    /// Whether it ended otherwise than Success.
    pub failed: bool,
    /// Standard output.
    pub stdout: Text,
    /// Standard error.
    pub stderr: Text,
}

/// Whether `text` (a status excerpt of `stream`) is cut: it ends with the operator's marker,
/// or it fills SSM's own limit for that stream.
pub fn is_cut(text: &str, stream: Stream) -> bool {
    text.ends_with(CUT_MARKER) || text.chars().count() >= stream.ssm_limit()
}

/// Whether the invocation ended otherwise than Success (`--failed`).
pub fn failed(cinv: &CommandInvocation) -> bool {
    invocation_state(cinv) == State::Failed
}

/// The entry of one invocation, from its status.
pub fn entry(cinv: &CommandInvocation) -> Entry {
    let status = cinv.status.clone().unwrap_or_default();
    let text = |content: Option<String>, stream| {
        let text = content.unwrap_or_default();
        Text {
            cut: is_cut(&text, stream),
            text,
            source: Source::Status,
        }
    };
    Entry {
        name: cinv.metadata.name.clone().unwrap_or_default(),
        instance_id: cinv.spec.instance_id.clone(),
        response_code: status.response_code.filter(|_| status.status.is_some()),
        status: status.status,
        failed: failed(cinv),
        stdout: text(status.standard_output_content, Stream::Stdout),
        stderr: text(status.standard_error_content, Stream::Stderr),
    }
}

/// The lines `logs` prints for `entries`: `[i-…] line` for stdout, `[i-… stderr] line` for
/// stderr, stdout first. A text without a final newline still ends its last line.
pub fn format(entries: &[Entry]) -> String {
    let mut out = String::new();
    for entry in entries {
        for (text, tag) in [(&entry.stdout, ""), (&entry.stderr, " stderr")] {
            for line in text.text.lines() {
                out.push_str(&format!("[{}{tag}] {line}\n", entry.instance_id));
            }
        }
    }
    out
}

/// One line on stderr per entry for people: status, exit code, and a hint when cut.
pub fn summary(entry: &Entry, full: bool) -> String {
    let mut line = format!(
        "# {} (cinv/{}): {}",
        entry.instance_id,
        entry.name,
        entry.status.as_deref().unwrap_or("no SSM status yet")
    );
    if let Some(code) = entry.response_code {
        line.push_str(&format!(", exit code {code}"));
    }
    let cut: Vec<&str> = [(&entry.stdout, "stdout"), (&entry.stderr, "stderr")]
        .iter()
        .filter(|(t, _)| t.cut)
        .map(|(_, name)| *name)
        .collect();
    if !cut.is_empty() && !full {
        line.push_str(&format!(
            "; {} cut: --full fetches the whole text",
            cut.join(" and ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_operator::api::{CommandInvocationSpec, CommandInvocationStatus};

    fn text(t: &str) -> Text {
        Text {
            text: t.into(),
            cut: false,
            source: Source::Status,
        }
    }

    fn node(id: &str, stdout: &str, stderr: &str) -> Entry {
        Entry {
            name: format!("web-{id}"),
            instance_id: id.into(),
            status: Some("Success".into()),
            response_code: Some(0),
            failed: false,
            stdout: text(stdout),
            stderr: text(stderr),
        }
    }

    #[test]
    fn every_line_carries_its_instance_and_stderr_is_marked() {
        let out = format(&[
            node("i-1", "one\ntwo\n", "warn\n"),
            node("i-2", "last line without newline", ""),
        ]);
        assert_eq!(
            out,
            "[i-1] one\n[i-1] two\n[i-1 stderr] warn\n[i-2] last line without newline\n"
        );
        assert_eq!(format(&[node("i-3", "", "")]), "");
    }

    #[test]
    fn cut_excerpts_are_recognised() {
        assert!(is_cut(&format!("head{CUT_MARKER}"), Stream::Stdout));
        assert!(is_cut(&"x".repeat(24_000), Stream::Stdout));
        assert!(!is_cut(&"x".repeat(23_999), Stream::Stdout));
        assert!(is_cut(&"é".repeat(8_000), Stream::Stderr));
        assert!(!is_cut(&"é".repeat(7_999), Stream::Stderr));
        assert!(!is_cut("", Stream::Stderr));
    }

    #[test]
    fn an_entry_from_status_and_its_summary() {
        let mut cinv = CommandInvocation::new(
            "web-i-1",
            CommandInvocationSpec {
                command_id: "c".into(),
                instance_id: "i-1".into(),
                plugin_name: None,
                region: None,
                ttl_seconds_after_finished: None,
            },
        );
        cinv.status = Some(CommandInvocationStatus {
            status: Some("Failed".into()),
            response_code: Some(3),
            standard_output_content: Some(format!("partial{CUT_MARKER}")),
            standard_error_content: Some("disk full\n".into()),
            observed_generation: Some(1),
            ..Default::default()
        });
        cinv.metadata.generation = Some(1);
        let e = entry(&cinv);
        assert_eq!((e.stdout.cut, e.stderr.cut), (true, false));
        assert_eq!(e.response_code, Some(3));
        assert_eq!(
            summary(&e, false),
            "# i-1 (cinv/web-i-1): Failed, exit code 3; stdout cut: --full fetches the whole text"
        );
        assert_eq!(
            summary(&e, true),
            "# i-1 (cinv/web-i-1): Failed, exit code 3"
        );
    }
}
