//! SendCommand's side of the simulator: how the commands it makes play (per-instance
//! scripts, the default timeline, tag targets that resolve over time), the documents it
//! refuses, the faults only it suffers, and the records of what was sent and cancelled.
//!
//! The state ([`Sending`]) lives in the simulator's store (the `model` module), under the
//! same lock as the commands; the public handle is [`crate::Simulator`]'s SendCommand
//! methods (the `simulator_send` module), and the scenario-file shapes of this set-up are
//! in the `scenario` module.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::script::{millis, Invocation, Plugin};

/// The target key whose values are instance ids themselves, as in SSM.
pub(crate) const INSTANCE_IDS_KEY: &str = "InstanceIds";

/// A misbehaviour of the next SendCommand request, queued with
/// [`crate::Simulator::inject_send`] apart from the global [`crate::Fault`] queue.
///
/// A SendCommand request takes the first queued one once it gets past the rate limit and
/// the global faults. In a scenario file it is written `{"kind": "Refuse", "code": …,
/// "message": …}`, `{"kind": "Throttle"}`, `{"kind": "AcceptThenFail"}` or
/// `{"kind": "AcceptThenHang", "delay_ms": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum SendFault {
    /// Answer HTTP 400 with this error code (`__type`) and message; nothing is created.
    /// Codes SSM uses: `InvalidDocument`, `InvalidParameters`, `InvalidInstanceId`,
    /// `InvalidOutputFolder`, `InvalidRole`, `AccessDeniedException`, … (`InternalServerError`
    /// answers HTTP 500).
    Refuse {
        /// The error code, e.g. `InvalidParameters`.
        code: String,
        /// The message.
        #[serde(default)]
        message: String,
    },
    /// Answer HTTP 400 `ThrottlingException` "Rate exceeded"; nothing is created.
    Throttle,
    /// Create the command, then answer HTTP 500 `InternalServerError`: the reply is lost.
    AcceptThenFail,
    /// Create the command, and answer (normally) only after `delay`, holding the connection:
    /// a client may give up, or be killed, meanwhile.
    AcceptThenHang {
        /// How long the reply waits once the command exists.
        #[serde(rename = "delay_ms", alias = "delayMs", with = "millis")]
        delay: Duration,
    },
}

impl SendFault {
    /// [`SendFault::Refuse`] with this code and message.
    pub fn refuse(code: impl Into<String>, message: impl Into<String>) -> SendFault {
        SendFault::Refuse {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// One command created by SendCommand, as the request asked for it
/// ([`crate::Simulator::sent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// The id the command got.
    pub command_id: String,
    /// `Comment` (empty when not given).
    pub comment: String,
    /// `DocumentName`.
    pub document_name: String,
    /// `DocumentVersion`, if given.
    pub document_version: Option<String>,
    /// `InstanceIds` as sent (empty when `Targets` were used).
    pub instance_ids: Vec<String>,
    /// `Targets` as sent, as (key, values).
    pub targets: Vec<(String, Vec<String>)>,
    /// `Parameters`.
    pub parameters: BTreeMap<String, Vec<String>>,
    /// `MaxConcurrency`, if given.
    pub max_concurrency: Option<String>,
    /// `MaxErrors`, if given.
    pub max_errors: Option<String>,
    /// `TimeoutSeconds`, if given.
    pub timeout_seconds: Option<i64>,
    /// `OutputS3BucketName`, if given.
    pub output_s3_bucket_name: Option<String>,
    /// `OutputS3KeyPrefix`, if given.
    pub output_s3_key_prefix: Option<String>,
    /// Wall-clock time the command was created.
    pub at: SystemTime,
}

/// SendCommand's set-up and records.
#[derive(Debug, Default)]
pub(crate) struct Sending {
    /// Per-instance scripts, by instance id.
    scripts: HashMap<String, Invocation>,
    /// The plugins of unscripted instances; empty: SendCommand's built-in default.
    default_plugins: Vec<Plugin>,
    /// (key, value) to the instances it resolves to, with when each appears.
    targets: HashMap<(String, String), Vec<(String, Duration)>>,
    /// Documents answered `InvalidDocument`.
    refused_documents: BTreeSet<String>,
    /// How long a command made by SendCommand stays out of ListCommands.
    pub(crate) list_lag: Duration,
    /// The commands created, in order.
    pub(crate) sent: Vec<Sent>,
    /// The `CommandId` of every CancelCommand request handled, in order.
    pub(crate) cancelled: Vec<String>,
}

impl Sending {
    /// Commands made from now on give the script's instance this script.
    pub(crate) fn script_instance(&mut self, script: Invocation) {
        self.scripts.insert(script.instance_id.clone(), script);
    }

    /// Unscripted instances get these plugins; none: the built-in default timeline.
    pub(crate) fn set_default(&mut self, plugins: Vec<Plugin>) {
        self.default_plugins = plugins;
    }

    /// Forgets the per-instance scripts and the default plugins.
    pub(crate) fn clear_scripts(&mut self) {
        self.scripts.clear();
        self.default_plugins.clear();
    }

    /// Target `key` = `value` resolves to these instances, each appearing that long after
    /// the command is created (replacing what it resolved to before).
    pub(crate) fn resolve_target(
        &mut self,
        key: String,
        value: String,
        instances: Vec<(String, Duration)>,
    ) {
        self.targets.insert((key, value), instances);
    }

    /// SendCommand answers `InvalidDocument` for this document from now on.
    pub(crate) fn refuse_document(&mut self, name: String) {
        self.refused_documents.insert(name);
    }

    /// Whether SendCommand refuses this document.
    pub(crate) fn refuses(&self, document: &str) -> bool {
        self.refused_documents.contains(document)
    }

    /// The invocation a command made now gives `instance_id`: its script, else the default
    /// plugins, else the built-in default timeline for `plugin_name`. For an instance that
    /// appears `appears_after` the command (a target), every time of the script counts from
    /// then: it is hidden until then, and its steps are that much later.
    pub(crate) fn invocation(
        &self,
        instance_id: &str,
        appears_after: Duration,
        plugin_name: &str,
    ) -> Invocation {
        let mut invocation = match self.scripts.get(instance_id) {
            Some(script) => script.clone(),
            None => {
                let mut invocation = Invocation::new(instance_id);
                invocation.plugins = self.default_plugins.clone();
                invocation
            }
        };
        if invocation.plugins.is_empty() {
            invocation
                .plugins
                .push(Plugin::default_for(plugin_name, instance_id));
        }
        if !appears_after.is_zero() {
            invocation.hidden_for = invocation.hidden_for.saturating_add(appears_after);
            for step in invocation
                .plugins
                .iter_mut()
                .flat_map(|p| p.steps.iter_mut())
            {
                step.after = step.after.saturating_add(appears_after);
            }
        }
        invocation
    }

    /// The instances `targets` select, each with when it appears, earliest first (ties in
    /// the order resolved). Within one target the values are alternatives (an instance found
    /// under several appears at the earliest); several targets must all select an instance
    /// (it appears at the latest). Key `InstanceIds` names instances directly (at once).
    pub(crate) fn resolve(&self, targets: &[(String, Vec<String>)]) -> Vec<(String, Duration)> {
        let mut selected: Option<Vec<(String, Duration)>> = None;
        for (key, values) in targets {
            let mut found: Vec<(String, Duration)> = Vec::new();
            let mut position: HashMap<String, usize> = HashMap::new();
            for value in values {
                let direct;
                let instances = if key == INSTANCE_IDS_KEY {
                    direct = [(value.clone(), Duration::ZERO)];
                    direct.as_slice()
                } else {
                    self.targets
                        .get(&(key.clone(), value.clone()))
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                };
                for (id, after) in instances {
                    match position.get(id) {
                        Some(&i) => found[i].1 = found[i].1.min(*after),
                        None => {
                            position.insert(id.clone(), found.len());
                            found.push((id.clone(), *after));
                        }
                    }
                }
            }
            selected = Some(match selected {
                None => found,
                Some(before) => before
                    .into_iter()
                    .filter_map(|(id, after)| {
                        let also = position.get(&id).map(|&i| found[i].1)?;
                        Some((id, after.max(also)))
                    })
                    .collect(),
            });
        }
        let mut selected = selected.unwrap_or_default();
        selected.sort_by_key(|&(_, after)| after);
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Status;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pairs(list: &[(&str, u64)]) -> Vec<(String, Duration)> {
        list.iter()
            .map(|&(id, t)| (id.to_string(), ms(t)))
            .collect()
    }

    fn target(key: &str, values: &[&str]) -> (String, Vec<String>) {
        (
            key.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    #[test]
    fn targets_resolve_by_value_union_and_key_intersection() {
        let mut sending = Sending::default();
        sending.resolve_target(
            "tag:Role".into(),
            "web".into(),
            pairs(&[("i-1", 300), ("i-2", 0)]),
        );
        sending.resolve_target(
            "tag:Role".into(),
            "api".into(),
            pairs(&[("i-3", 100), ("i-1", 200)]),
        );
        sending.resolve_target("tag:Env".into(), "prod".into(), pairs(&[("i-1", 500)]));
        assert_eq!(
            sending.resolve(&[target("tag:Role", &["web", "api"])]),
            pairs(&[("i-2", 0), ("i-3", 100), ("i-1", 200)])
        );
        assert_eq!(
            sending.resolve(&[target("tag:Role", &["web"]), target("tag:Env", &["prod"])]),
            pairs(&[("i-1", 500)])
        );
        assert!(sending.resolve(&[target("tag:Role", &["db"])]).is_empty());
        assert_eq!(
            sending.resolve(&[target("InstanceIds", &["i-9", "i-8"])]),
            pairs(&[("i-9", 0), ("i-8", 0)])
        );
    }

    #[test]
    fn scripts_defaults_and_appearance_shift_times() {
        let mut sending = Sending::default();
        let unscripted = sending.invocation("i-1", Duration::ZERO, "aws:runShellScript");
        assert_eq!(
            unscripted.plugins,
            [Plugin::default_for("aws:runShellScript", "i-1")]
        );
        sending.set_default(vec![Plugin::succeeding("", ms(100))]);
        let defaulted = sending.invocation("i-1", ms(1000), "aws:runShellScript");
        assert_eq!(defaulted.hidden_for, ms(1000));
        assert_eq!(defaulted.plugins[0].steps[1].after, ms(1100));
        sending.script_instance(
            Invocation::new("i-2")
                .hidden_for(ms(50))
                .plugin(Plugin::failing_at("p", ms(10), ms(20), 3).stderr("boom")),
        );
        let scripted = sending.invocation("i-2", ms(500), "aws:runShellScript");
        assert_eq!(scripted.hidden_for, ms(550));
        assert_eq!(scripted.plugins[0].steps[1].after, ms(520));
        assert_eq!(scripted.plugins[0].steps[1].status, Status::Failed);
        assert_eq!(scripted.plugins[0].stderr, "boom");
        sending.clear_scripts();
        assert_eq!(
            sending.invocation("i-2", Duration::ZERO, "x").plugins,
            [Plugin::default_for("x", "i-2")]
        );
    }

    #[test]
    fn send_faults_parse_from_json() {
        let faults: Vec<SendFault> = serde_json::from_str(
            r#"[{"kind":"Refuse","code":"InvalidParameters","message":"bad"},
                {"kind":"Throttle"},{"kind":"AcceptThenFail"},
                {"kind":"AcceptThenHang","delay_ms":1500}]"#,
        )
        .unwrap();
        assert_eq!(
            faults,
            [
                SendFault::refuse("InvalidParameters", "bad"),
                SendFault::Throttle,
                SendFault::AcceptThenFail,
                SendFault::AcceptThenHang { delay: ms(1500) },
            ]
        );
        let extra = r#"{"kind":"AcceptThenHang","delay_ms":1,"n":1}"#;
        assert!(serde_json::from_str::<SendFault>(extra).is_err());
        assert!(serde_json::from_str::<SendFault>(r#"{"kind":"Explode"}"#).is_err());
    }
}
