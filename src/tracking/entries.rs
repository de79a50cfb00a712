//! Pure: what one node's entry in `ListCommandInvocations` (with details) says about one
//! tracked step, or that only `GetCommandInvocation` can say it.
//!
//! List answers a step exactly when it lists the node, the step is named (or the node has a
//! single step and none was asked for), and the step's `Output` was not cut. `Output` is the
//! SSM agent's `TruncateOutput(stdout, stderr, 2500)`: stdout, then [`ERROR_SEPARATOR`] and
//! stderr when there is stderr; uncut, it gives both streams exactly. Anything else (not listed
//! yet, a multi-step document without a step name, output that may be cut once the step ended)
//! is left to `GetCommandInvocation`, which is also what reports SSM's own errors.

use crate::aws::ssm::is_terminal;
use crate::aws::ssm::{Invocation, Listed, ListedPlugin};

/// Where the agent's combined `Output` switches from stdout to stderr.
pub const ERROR_SEPARATOR: &str = "\n----------ERROR-------\n";
/// Characters of `Output` in List; output this long may have been cut.
pub const LIST_OUTPUT_CHARS: usize = 2500;

/// What List says about one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromList {
    /// The answer, as `GetCommandInvocation` would give it for the step.
    Answer(Box<Invocation>),
    /// Only `GetCommandInvocation` can tell.
    NeedsGet(Why),
}

/// Why List cannot answer for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The node is not on the list (not visible yet, or not part of the command).
    NotListed,
    /// The step name given is not among the node's steps, or none was given and the node has
    /// several: SSM's own answer (an error) decides.
    StepUnclear,
    /// The step ended and its output may have been cut at 2,500 characters.
    OutputCut,
}

/// The answer for the step `plugin_name` (or the only step) of `listed`, if List has it.
pub fn from_list(listed: Option<&Listed>, plugin_name: Option<&str>) -> FromList {
    let Some(listed) = listed else {
        return FromList::NeedsGet(Why::NotListed);
    };
    let plugin = match plugin_name {
        Some(name) => listed.plugins.iter().find(|p| p.name == name),
        None if listed.plugins.len() == 1 => listed.plugins.first(),
        None => None,
    };
    let Some(plugin) = plugin else {
        return FromList::NeedsGet(Why::StepUnclear);
    };
    let ended = is_terminal(&plugin.status);
    if ended && plugin.output.chars().count() >= LIST_OUTPUT_CHARS {
        return FromList::NeedsGet(Why::OutputCut);
    }
    FromList::Answer(Box::new(invocation_of(listed, plugin, ended)))
}

/// The step as `GetCommandInvocation` reports it: the step's status, code, times and output,
/// the invocation's document, comment and CloudWatch settings.
fn invocation_of(listed: &Listed, plugin: &ListedPlugin, ended: bool) -> Invocation {
    let (stdout, stderr) = split_output(&plugin.output);
    Invocation {
        status: plugin.status.clone(),
        status_details: plugin.status_details.clone(),
        response_code: plugin.response_code,
        plugin_name: plugin.name.clone(),
        execution_start_date_time: plugin.start.clone(),
        execution_end_date_time: plugin.finish.clone(),
        execution_elapsed_time: plugin
            .elapsed_seconds
            .filter(|_| ended)
            .map(iso_duration)
            .unwrap_or_default(),
        // Output shows once the step has ended, as GetCommandInvocation shows it.
        standard_output_content: if ended { stdout } else { String::new() },
        standard_error_content: if ended { stderr } else { String::new() },
        standard_output_url: plugin.standard_output_url.clone(),
        standard_error_url: plugin.standard_error_url.clone(),
        ..listed.invocation.clone()
    }
}

/// Splits the agent's uncut `Output` into stdout and stderr.
pub fn split_output(output: &str) -> (String, String) {
    match output.split_once(ERROR_SEPARATOR) {
        Some((stdout, stderr)) => (stdout.to_string(), stderr.to_string()),
        None => (output.to_string(), String::new()),
    }
}

/// Seconds as an ISO-8601 duration the way SSM writes `ExecutionElapsedTime` (`PT1.234S`).
pub fn iso_duration(seconds: f64) -> String {
    let millis = (seconds.max(0.0) * 1000.0).round() as u64;
    format!("PT{}.{:03}S", millis / 1000, millis % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &str, status: &str, output: &str) -> ListedPlugin {
        ListedPlugin {
            name: name.into(),
            status: status.into(),
            status_details: status.into(),
            response_code: if status == "Success" { 0 } else { -1 },
            start: "2026-11-30T10:00:00Z".into(),
            finish: if is_terminal(status) {
                "2026-11-30T10:00:01.5Z".into()
            } else {
                String::new()
            },
            elapsed_seconds: is_terminal(status).then_some(1.5),
            output: output.into(),
            standard_output_url: String::new(),
            standard_error_url: String::new(),
        }
    }

    fn listed(plugins: Vec<ListedPlugin>) -> Listed {
        Listed {
            instance_id: "i-0123456789abcdef0".into(),
            invocation: Invocation {
                status: "InProgress".into(),
                document_name: "AWS-RunShellScript".into(),
                document_version: "1".into(),
                comment: "deploy".into(),
                ..Invocation::default()
            },
            plugins,
        }
    }

    #[test]
    fn a_single_step_is_answered_like_get_command_invocation() {
        let node = listed(vec![plugin(
            "aws:runShellScript",
            "Success",
            "hello\n----------ERROR-------\nwarn\n",
        )]);
        let FromList::Answer(answer) = from_list(Some(&node), None) else {
            panic!("List has it")
        };
        assert_eq!(
            answer.status, "Success",
            "the step's status, not the node's"
        );
        assert_eq!(answer.response_code, 0);
        assert_eq!(answer.plugin_name, "aws:runShellScript");
        assert_eq!(answer.standard_output_content, "hello");
        assert_eq!(answer.standard_error_content, "warn\n");
        assert_eq!(answer.execution_elapsed_time, "PT1.500S");
        assert_eq!(answer.document_name, "AWS-RunShellScript");
        assert_eq!(answer.comment, "deploy");
    }

    #[test]
    fn a_running_step_shows_no_output_and_no_ticking_elapsed_time() {
        let node = listed(vec![plugin("aws:runShellScript", "InProgress", "partial")]);
        let FromList::Answer(answer) = from_list(Some(&node), None) else {
            panic!("List has it")
        };
        assert_eq!(answer.status, "InProgress");
        assert_eq!(answer.standard_output_content, "");
        assert_eq!(answer.execution_elapsed_time, "");
        assert_eq!(answer.response_code, -1);
    }

    #[test]
    fn output_without_stderr_is_all_stdout() {
        assert_eq!(split_output("a\nb\n"), ("a\nb\n".into(), String::new()));
        assert_eq!(split_output(""), (String::new(), String::new()));
    }

    #[test]
    fn what_list_cannot_answer_is_left_to_get() {
        let two = listed(vec![
            plugin("one", "Success", ""),
            plugin("two", "InProgress", ""),
        ]);
        assert_eq!(from_list(None, None), FromList::NeedsGet(Why::NotListed));
        assert_eq!(
            from_list(Some(&two), None),
            FromList::NeedsGet(Why::StepUnclear)
        );
        assert_eq!(
            from_list(Some(&two), Some("three")),
            FromList::NeedsGet(Why::StepUnclear)
        );
        let FromList::Answer(second) = from_list(Some(&two), Some("two")) else {
            panic!("a named step is answered")
        };
        assert_eq!(second.status, "InProgress");
        let long = "x".repeat(LIST_OUTPUT_CHARS);
        let cut = listed(vec![plugin("one", "Failed", &long)]);
        assert_eq!(
            from_list(Some(&cut), None),
            FromList::NeedsGet(Why::OutputCut)
        );
        let running = listed(vec![plugin("one", "InProgress", &long)]);
        assert!(
            matches!(from_list(Some(&running), None), FromList::Answer(_)),
            "output is read once the step has ended"
        );
        let short = listed(vec![plugin("one", "Failed", &"x".repeat(2499))]);
        assert!(matches!(from_list(Some(&short), None), FromList::Answer(_)));
    }

    #[test]
    fn durations_are_written_as_ssm_writes_them() {
        assert_eq!(iso_duration(0.0), "PT0.000S");
        assert_eq!(iso_duration(61.2345), "PT61.235S");
        assert_eq!(iso_duration(-1.0), "PT0.000S");
    }
}
