//! Pure: what one node's entry in `ListCommandInvocations` (with details) says about one
//! tracked step, or that only `GetCommandInvocation` can say it.
//!
//! List answers a step exactly when it lists the node, the step is named (or the node has a
//! single step and none was asked for), and the step's `Output` was not cut. `Output` is the
//! SSM agent's `TruncateOutput(stdout, stderr, 2500)`: stdout, then [`ERROR_SEPARATOR`] and
//! stderr when there is stderr; uncut, it gives both streams exactly. Anything else (not listed
//! yet, a step name not among the node's steps, output that may be cut once the step ended)
//! is left to `GetCommandInvocation`, which is also what reports SSM's own errors.
//!
//! A resource that names no step on a node with several steps mirrors the invocation **as a
//! whole** (the contract's "Multi-step documents"): only List can say that (Get refuses a
//! missing step name there), so it is never left to a Get without a step name. Its status is
//! the invocation's; its step name, code, times and output are those of the step that decided
//! the outcome ([`deciding_step`]); every step is listed in [`Invocation::steps`]. When that
//! step's output may have been cut, a Get *with its name* reads the full text
//! ([`FromList::OutputFromGet`], [`with_output_of`]).

use crate::aws::ssm::is_terminal;
use crate::aws::ssm::{Invocation, Listed, ListedPlugin, StepOutcome};

/// Where the agent's combined `Output` switches from stdout to stderr.
pub const ERROR_SEPARATOR: &str = "\n----------ERROR-------\n";
/// Characters of `Output` in List; output this long may have been cut.
pub const LIST_OUTPUT_CHARS: usize = 2500;
/// How the SSM agent starts the output of a step it skipped (a precondition such as the
/// platform was not met: `AWS-RunRemoteScript` skips the step for the other platform). SSM
/// reports such a step as `Success` with code 0 (the agent counts "Skipped" as a form of
/// success), so only this text (or a `Skipped` status or details, should SSM ever pass the
/// agent's own status on) tells it never ran.
pub const SKIPPED_OUTPUT: &str = "Step execution skipped";

/// What List says about one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromList {
    /// The answer, as `GetCommandInvocation` would give it for the step (or, for a multi-step
    /// invocation without a step name, the invocation as a whole).
    Answer(Box<Invocation>),
    /// The invocation as a whole, but the deciding step's output may have been cut: a
    /// `GetCommandInvocation` with the step name `step` reads its full output
    /// ([`with_output_of`]).
    OutputFromGet {
        /// The answer, with List's (possibly cut) output.
        answer: Box<Invocation>,
        /// The deciding step, to name in the Get.
        step: String,
    },
    /// Only `GetCommandInvocation` can tell.
    NeedsGet(Why),
}

/// Why List cannot answer for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The node is not on the list (not visible yet, or not part of the command).
    NotListed,
    /// The step name given is not among the node's steps, or the node lists no step at all:
    /// SSM's own answer (an error, or the one step) decides.
    StepUnclear,
    /// The step ended and its output may have been cut at 2,500 characters.
    OutputCut,
}

/// The answer for the step `plugin_name` (or the only step, or without a step name on
/// several steps the invocation as a whole) of `listed`, if List has it.
pub fn from_list(listed: Option<&Listed>, plugin_name: Option<&str>) -> FromList {
    let Some(listed) = listed else {
        return FromList::NeedsGet(Why::NotListed);
    };
    let plugin = match plugin_name {
        Some(name) => listed.plugins.iter().find(|p| p.name == name),
        None if listed.plugins.len() == 1 => listed.plugins.first(),
        None if listed.plugins.len() > 1 => return whole(listed),
        None => None,
    };
    let Some(plugin) = plugin else {
        return FromList::NeedsGet(Why::StepUnclear);
    };
    let ended = is_terminal(&plugin.status);
    if ended && may_be_cut(plugin) {
        return FromList::NeedsGet(Why::OutputCut);
    }
    FromList::Answer(Box::new(invocation_of(listed, plugin, ended)))
}

/// Whether List may have cut the step's `Output`.
fn may_be_cut(plugin: &ListedPlugin) -> bool {
    plugin.output.chars().count() >= LIST_OUTPUT_CHARS
}

/// A multi-step invocation as a whole: the invocation's status and details, the deciding
/// step's name, code, times and output (shown once the invocation has ended, as Get shows a
/// step's output once it has ended), and every step.
fn whole(listed: &Listed) -> FromList {
    let Some(index) = deciding_step(&listed.plugins) else {
        return FromList::NeedsGet(Why::StepUnclear);
    };
    let plugin = &listed.plugins[index];
    let ended = is_terminal(&listed.invocation.status);
    let mut answer = invocation_of(listed, plugin, is_terminal(&plugin.status));
    answer.status = listed.invocation.status.clone();
    answer.status_details = listed.invocation.status_details.clone();
    if !ended {
        answer.standard_output_content.clear();
        answer.standard_error_content.clear();
    }
    answer.steps = Some(
        listed
            .plugins
            .iter()
            .map(|p| StepOutcome {
                name: p.name.clone(),
                status: p.status.clone(),
                response_code: p.response_code,
            })
            .collect(),
    );
    if ended && is_terminal(&plugin.status) && may_be_cut(plugin) {
        return FromList::OutputFromGet {
            answer: Box::new(answer),
            step: plugin.name.clone(),
        };
    }
    FromList::Answer(Box::new(answer))
}

/// Pure: the step that decided a multi-step invocation's outcome, by index in document
/// order: the first step that failed, timed out or was cancelled; else the last step that
/// ran (started, and not skipped); else (nothing ran yet) the first step. `None` only for no
/// steps at all.
pub fn deciding_step(plugins: &[ListedPlugin]) -> Option<usize> {
    if plugins.is_empty() {
        return None;
    }
    if let Some(failed) = plugins
        .iter()
        .position(|p| matches!(p.status.as_str(), "Failed" | "TimedOut" | "Cancelled"))
    {
        return Some(failed);
    }
    Some(plugins.iter().rposition(ran).unwrap_or(0))
}

/// Whether a step ran: it left `Pending` (and `Delayed`: the node was unreachable) and was
/// not skipped. A status newer than this operator counts as running, as everywhere.
fn ran(plugin: &ListedPlugin) -> bool {
    !matches!(plugin.status.as_str(), "" | "Pending" | "Delayed") && !skipped(plugin)
}

/// Whether the agent skipped the step (see [`SKIPPED_OUTPUT`]).
fn skipped(plugin: &ListedPlugin) -> bool {
    plugin.status.eq_ignore_ascii_case("Skipped")
        || plugin.status_details.eq_ignore_ascii_case("Skipped")
        || plugin.output.trim_start().starts_with(SKIPPED_OUTPUT)
}

/// `whole` (a multi-step invocation as a whole, from List) with the full output of its
/// deciding step as `GetCommandInvocation` gave it (`step`).
pub fn with_output_of(whole: Invocation, step: &Invocation) -> Invocation {
    Invocation {
        standard_output_content: step.standard_output_content.clone(),
        standard_error_content: step.standard_error_content.clone(),
        ..whole
    }
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
        steps: None,
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
            from_list(Some(&listed(Vec::new())), None),
            FromList::NeedsGet(Why::StepUnclear),
            "no steps listed: SSM's own answer decides"
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

    /// A multi-step node whose invocation-level status is `status`.
    fn node(status: &str, plugins: Vec<ListedPlugin>) -> Listed {
        let mut node = listed(plugins);
        node.invocation.status = status.into();
        node.invocation.status_details = status.into();
        node.invocation.document_name = "AWS-RunRemoteScript".into();
        node
    }

    fn code(mut plugin: ListedPlugin, code: i32) -> ListedPlugin {
        plugin.response_code = code;
        plugin
    }

    fn skipped_step(name: &str) -> ListedPlugin {
        let output = format!(
            "Step execution skipped due to unsatisfied preconditions: \
             '\"StringEquals\": [platformType, Windows]' failed. Step name: {name}"
        );
        plugin(name, "Success", &output)
    }

    fn statuses(names: &[&str]) -> Vec<ListedPlugin> {
        names
            .iter()
            .enumerate()
            .map(|(i, status)| plugin(&format!("step{i}"), status, ""))
            .collect()
    }

    #[test]
    fn the_deciding_step_is_the_first_that_failed_else_the_last_that_ran() {
        let cases: &[(&[&str], Option<usize>, &str)] = &[
            (&[], None, "no steps"),
            (
                &["Pending", "Pending"],
                Some(0),
                "nothing ran yet: the first",
            ),
            (
                &["Delayed", "Pending"],
                Some(0),
                "an unreachable node ran nothing",
            ),
            (&["InProgress", "Pending"], Some(0), "the first runs"),
            (
                &["Success", "Pending"],
                Some(0),
                "the first ran, the second waits",
            ),
            (&["Success", "InProgress"], Some(1), "the second runs"),
            (&["Success", "Success"], Some(1), "all succeeded: the last"),
            (&["Success", "Success", "Success"], Some(2), "three"),
            (
                &["Failed", "Success"],
                Some(0),
                "a failure decides, even if later ones ran",
            ),
            (&["Success", "Failed"], Some(1), "the second failed"),
            (
                &["Success", "Failed", "TimedOut"],
                Some(1),
                "the first failure",
            ),
            (
                &["TimedOut", "Failed"],
                Some(0),
                "a time-out counts as a failure",
            ),
            (&["Success", "Cancelled"], Some(1), "cancelled"),
            (
                &["Cancelled", "Cancelled"],
                Some(0),
                "all cancelled: the first",
            ),
            (&["Success", "Cancelling"], Some(1), "cancelling still runs"),
            (
                &["Success", "Paused"],
                Some(1),
                "a status newer than us counts as running",
            ),
            (
                &["Success", "Skipped"],
                Some(0),
                "a Skipped status never ran",
            ),
        ];
        for (steps, want, what) in cases {
            assert_eq!(deciding_step(&statuses(steps)), *want, "{what}: {steps:?}");
        }
    }

    #[test]
    fn skipped_steps_never_decide_wherever_they_stand() {
        // AWS-RunRemoteScript on Linux: the PowerShell step is skipped, before or after.
        let before = vec![
            plugin("downloadContent", "Success", ""),
            skipped_step("runPowerShellScript"),
            plugin("runShellScript", "Success", "ran"),
        ];
        assert_eq!(deciding_step(&before), Some(2));
        let after = vec![
            plugin("downloadContent", "Success", ""),
            plugin("runShellScript", "Success", "ran"),
            skipped_step("runPowerShellScript"),
        ];
        assert_eq!(deciding_step(&after), Some(1));
        let mut details = plugin("runPowerShellScript", "Success", "");
        details.status_details = "Skipped".into();
        let by_details = vec![plugin("downloadContent", "Success", ""), details];
        assert_eq!(deciding_step(&by_details), Some(0));
        let all = vec![skipped_step("a"), skipped_step("b")];
        assert_eq!(deciding_step(&all), Some(0), "nothing ran: the first");
        // A failure decides even after a skipped step.
        let failed = vec![
            plugin("downloadContent", "Success", ""),
            skipped_step("runPowerShellScript"),
            code(plugin("runShellScript", "Failed", "boom"), 2),
        ];
        assert_eq!(deciding_step(&failed), Some(2));
    }

    #[test]
    fn without_a_step_name_several_steps_are_mirrored_as_a_whole() {
        let done = node(
            "Failed",
            vec![
                plugin("downloadContent", "Success", "downloaded"),
                skipped_step("runPowerShellScript"),
                code(
                    plugin(
                        "runShellScript",
                        "Failed",
                        "half\n----------ERROR-------\nboom\n",
                    ),
                    2,
                ),
            ],
        );
        let FromList::Answer(answer) = from_list(Some(&done), None) else {
            panic!("List answers the whole invocation")
        };
        assert_eq!(answer.status, "Failed", "the invocation's status");
        assert_eq!(answer.status_details, "Failed");
        assert_eq!(answer.plugin_name, "runShellScript", "the deciding step");
        assert_eq!(answer.response_code, 2);
        assert_eq!(answer.standard_output_content, "half");
        assert_eq!(answer.standard_error_content, "boom\n");
        assert_eq!(answer.execution_start_date_time, "2026-11-30T10:00:00Z");
        assert_eq!(answer.execution_end_date_time, "2026-11-30T10:00:01.5Z");
        assert_eq!(answer.execution_elapsed_time, "PT1.500S");
        assert_eq!(answer.document_name, "AWS-RunRemoteScript");
        let steps: Vec<(&str, &str, i32)> = answer
            .steps
            .as_deref()
            .expect("every step")
            .iter()
            .map(|s| (s.name.as_str(), s.status.as_str(), s.response_code))
            .collect();
        assert_eq!(
            steps,
            [
                ("downloadContent", "Success", 0),
                ("runPowerShellScript", "Success", 0),
                ("runShellScript", "Failed", 2),
            ],
            "document order, skipped steps as SSM reports them"
        );

        // A named step of the same node is still that step alone.
        let FromList::Answer(named) = from_list(Some(&done), Some("downloadContent")) else {
            panic!("a named step is answered")
        };
        assert_eq!(
            (named.status.as_str(), named.steps.as_ref()),
            ("Success", None)
        );
        assert_eq!(named.standard_output_content, "downloaded");
        let FromList::Answer(single) =
            from_list(Some(&listed(vec![plugin("a", "Success", "")])), None)
        else {
            panic!("one step")
        };
        assert_eq!(single.steps, None, "one step is mirrored as before");
    }

    #[test]
    fn a_running_whole_shows_no_output_until_the_invocation_ends() {
        let running = node(
            "InProgress",
            vec![
                plugin("downloadContent", "Success", "downloaded"),
                plugin("runShellScript", "Pending", ""),
            ],
        );
        let FromList::Answer(answer) = from_list(Some(&running), None) else {
            panic!("List answers")
        };
        assert_eq!(answer.status, "InProgress");
        assert_eq!(
            answer.plugin_name, "downloadContent",
            "the last step that ran"
        );
        assert_eq!(answer.standard_output_content, "");
        assert_eq!(answer.execution_elapsed_time, "PT1.500S", "that step ended");
        let second = node(
            "InProgress",
            vec![
                plugin("downloadContent", "Success", "downloaded"),
                plugin("runShellScript", "InProgress", "partial"),
            ],
        );
        let FromList::Answer(answer) = from_list(Some(&second), None) else {
            panic!("List answers")
        };
        assert_eq!(answer.plugin_name, "runShellScript");
        assert_eq!(answer.execution_elapsed_time, "", "no ticking elapsed time");
        assert_eq!(answer.standard_output_content, "");
    }

    #[test]
    fn a_deciding_step_whose_output_may_be_cut_is_completed_by_a_named_get() {
        let long = "x".repeat(LIST_OUTPUT_CHARS);
        let done = node(
            "Success",
            vec![
                plugin("downloadContent", "Success", &long),
                plugin("runShellScript", "Success", &long),
            ],
        );
        let FromList::OutputFromGet { answer, step } = from_list(Some(&done), None) else {
            panic!("the output is read from Get")
        };
        assert_eq!(step, "runShellScript", "the deciding step, by name");
        assert_eq!(answer.status, "Success");
        let full = Invocation {
            standard_output_content: "y".repeat(24_000),
            standard_error_content: "e".into(),
            status: "Success".into(),
            ..Invocation::default()
        };
        let merged = with_output_of(*answer.clone(), &full);
        assert_eq!(merged.standard_output_content.len(), 24_000);
        assert_eq!(merged.standard_error_content, "e");
        assert_eq!(merged.steps, answer.steps, "the rest stays List's");
        assert_eq!(merged.plugin_name, "runShellScript");
        // Only the deciding step's output matters; a running invocation reads no output.
        let running = node(
            "InProgress",
            vec![
                plugin("downloadContent", "Success", &long),
                plugin("runShellScript", "InProgress", ""),
            ],
        );
        assert!(matches!(
            from_list(Some(&running), None),
            FromList::Answer(_)
        ));
    }

    #[test]
    fn durations_are_written_as_ssm_writes_them() {
        assert_eq!(iso_duration(0.0), "PT0.000S");
        assert_eq!(iso_duration(61.2345), "PT61.235S");
        assert_eq!(iso_duration(-1.0), "PT0.000S");
    }
}
