//! A whole scenario file as serde reads it: [`Scenario`], the commands to add when the
//! simulator starts and SendCommand's set-up, with the shapes that set-up is written in
//! (per-instance scripts, tag targets). Its JSON shape is documented in `sim/README.md`;
//! [`crate::Simulator::load_scenario`] applies it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::script::{millis, Command, Invocation, Plugin, ScriptedError};
use crate::sending::SendFault;

/// A whole scenario file: the commands to add when the simulator starts, and how
/// SendCommand behaves. [`crate::Simulator::load_scenario`] applies all of it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The commands, added in this order; their timelines start when they are added.
    #[serde(default)]
    pub commands: Vec<Command>,
    /// Per-instance scripts for commands made by SendCommand, by instance id
    /// ([`crate::Simulator::script_instance`]).
    #[serde(default, alias = "sendScripts")]
    pub(crate) send_scripts: BTreeMap<String, InstanceScriptJson>,
    /// The plugins of unscripted instances ([`crate::Simulator::set_send_default`]).
    #[serde(default, alias = "sendDefault")]
    pub(crate) send_default: Vec<Plugin>,
    /// Tag targets ([`crate::Simulator::resolve_target`]).
    #[serde(default)]
    pub(crate) targets: Vec<TargetJson>,
    /// Documents SendCommand refuses ([`crate::Simulator::refuse_document`]).
    #[serde(default, alias = "refusedDocuments")]
    pub(crate) refused_documents: Vec<String>,
    /// SendCommand faults, queued in order ([`crate::Simulator::inject_send`]).
    #[serde(default, alias = "sendFaults")]
    pub(crate) send_faults: Vec<SendFault>,
    /// ListCommands' lag ([`crate::Simulator::set_list_commands_lag`]).
    #[serde(
        default,
        rename = "list_commands_lag_ms",
        alias = "listCommandsLagMs",
        with = "millis"
    )]
    pub(crate) list_commands_lag: Duration,
}

impl Scenario {
    /// Parses a scenario from its JSON text (shape documented in `sim/README.md`).
    pub fn from_json(text: &str) -> Result<Scenario, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A per-instance script in a scenario file: an invocation without its instance id (the
/// key it is filed under).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstanceScriptJson {
    #[serde(default)]
    plugins: Vec<Plugin>,
    #[serde(default, rename = "hidden_ms", alias = "hiddenMs", with = "millis")]
    hidden_for: Duration,
    #[serde(default, alias = "alwaysError")]
    always_error: Option<ScriptedError>,
}

impl InstanceScriptJson {
    /// The script as an invocation on `instance_id`.
    pub(crate) fn into_invocation(self, instance_id: String) -> Invocation {
        let mut invocation = Invocation::new(instance_id);
        invocation.plugins = self.plugins;
        invocation.hidden_for = self.hidden_for;
        invocation.always_error = self.always_error;
        invocation
    }
}

/// A tag target in a scenario file: `key` = `value` resolves to `instances`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetJson {
    pub(crate) key: String,
    pub(crate) value: String,
    #[serde(default)]
    pub(crate) instances: Vec<TargetInstanceJson>,
}

/// One instance a [`TargetJson`] resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetInstanceJson {
    #[serde(alias = "instanceId")]
    pub(crate) instance_id: String,
    #[serde(
        default,
        rename = "appears_after_ms",
        alias = "appearsAfterMs",
        with = "millis"
    )]
    pub(crate) appears_after: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Status;

    #[test]
    fn scenario_json_parses() {
        let text = r#"{"commands":[{"command_id":"c1","comment":"hi",
            "s3_bucket":"b","s3_key_prefix":"p","cloudwatch_log_group":"/g",
            "invocations":[{"instance_id":"i-1","hidden_ms":500,
              "always_error":{"code":"AccessDeniedException","message":"no"},
              "plugins":[{"name":"aws:runShellScript","stdout":"out",
                "steps":[{"after_ms":100,"status":"InProgress"},
                         {"after_ms":200,"status":"Failed","details":"Terminated","response_code":137}]}]}]}]}"#;
        let scenario = Scenario::from_json(text).unwrap();
        let expected = Command::new("c1")
            .comment("hi")
            .s3_output("b", "p")
            .cloudwatch("/g")
            .invocation(
                Invocation::new("i-1")
                    .hidden_for(Duration::from_millis(500))
                    .always_error("AccessDeniedException", "no")
                    .plugin(
                        Plugin::new("aws:runShellScript")
                            .stdout("out")
                            .step(Duration::from_millis(100), Status::InProgress)
                            .step_with(
                                Duration::from_millis(200),
                                Status::Failed,
                                "Terminated",
                                137,
                            ),
                    ),
            );
        assert_eq!(scenario.commands, vec![expected]);
    }

    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../README.md");
        let start = readme.find("```json\n").unwrap() + "```json\n".len();
        let len = readme[start..].find("\n```").unwrap();
        let scenario = Scenario::from_json(&readme[start..start + len]).unwrap();
        let invocations = &scenario.commands[0].invocations;
        assert_eq!(invocations.len(), 4);
        assert_eq!(invocations[1].hidden_for, Duration::from_secs(1));
        assert_eq!(
            invocations[1].plugins[0].steps[0].details(),
            "Delivery Timed Out"
        );
    }

    /// The `n`th ```json block of the README.
    fn readme_json(n: usize) -> &'static str {
        let readme = include_str!("../README.md");
        let mut rest = readme;
        for _ in 0..n {
            let start = rest.find("```json\n").unwrap() + "```json\n".len();
            rest = &rest[start..];
        }
        let start = rest.find("```json\n").unwrap() + "```json\n".len();
        let len = rest[start..].find("\n```").unwrap();
        &rest[start..start + len]
    }

    #[test]
    fn readme_send_setup_parses() {
        let scenario = Scenario::from_json(readme_json(1)).unwrap();
        assert!(scenario.commands.is_empty());
        assert_eq!(scenario.send_scripts.len(), 2);
        let failing = scenario.send_scripts["i-0aaaaaaaaaaaaaaaa"]
            .clone()
            .into_invocation("i-0aaaaaaaaaaaaaaaa".into());
        assert_eq!(failing.plugins[0].steps[1].response_code(), 3);
        assert_eq!(failing.plugins[0].stderr, "X\n");
        assert_eq!(scenario.send_default[0].steps.len(), 2);
        assert_eq!(
            scenario.targets[0].instances[1].instance_id,
            "i-0cccccccccccccccc"
        );
        assert_eq!(
            scenario.targets[0].instances[1].appears_after,
            Duration::from_secs(1)
        );
        assert_eq!(scenario.refused_documents, ["Custom-Missing"]);
        assert_eq!(scenario.send_faults, [SendFault::AcceptThenFail]);
        assert_eq!(scenario.list_commands_lag, Duration::from_secs(2));
    }

    #[test]
    fn send_setup_accepts_camel_case() {
        let text = r#"{"sendScripts":{"i-1":{"hiddenMs":5,"alwaysError":{"code":"X"}}},
            "targets":[{"key":"tag:Role","value":"web",
                        "instances":[{"instanceId":"i-1","appearsAfterMs":1000}]}],
            "sendFaults":[{"kind":"AcceptThenHang","delayMs":30}],
            "refusedDocuments":["D"],"listCommandsLagMs":7}"#;
        let scenario = Scenario::from_json(text).unwrap();
        let script = scenario.send_scripts["i-1"]
            .clone()
            .into_invocation("i-1".into());
        assert_eq!(script.hidden_for, Duration::from_millis(5));
        assert_eq!(script.always_error.map(|e| e.code).as_deref(), Some("X"));
        assert_eq!(
            scenario.targets[0].instances[0].appears_after,
            Duration::from_secs(1)
        );
        assert_eq!(
            scenario.send_faults,
            [SendFault::AcceptThenHang {
                delay: Duration::from_millis(30)
            }]
        );
        assert_eq!(scenario.list_commands_lag, Duration::from_millis(7));
        assert!(Scenario::from_json(r#"{"sendScripts":{"i-1":{"instance_id":"i-1"}}}"#).is_err());
        assert!(Scenario::from_json(r#"{"targets":[{"key":"k","value":"v","bogus":1}]}"#).is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(Scenario::from_json(r#"{"commands":[{"command_id":"c","bogus":1}]}"#).is_err());
    }
}
