//! Pure: the child `CommandInvocation` a `Command` gets for each node SSM reports, named
//! `<command name>-<instance id>` (cut and hashed past 253 characters), labelled
//! `ssm.operator.dev/command: <command name>` (and `ssm.operator.dev/command-id: <SSM command
//! id>`, so a run's children are found from metadata alone) and owned by the `Command` (a controller
//! ownerReference, so garbage collection removes children with their parent).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::{Command, CommandInvocation, CommandInvocationSpec};

/// The label naming a child's `Command`.
pub const COMMAND_LABEL: &str = "ssm.operator.dev/command";
/// The label naming a child's run (the SSM command id), so a run's children are found from
/// their metadata alone. Children created before it was added lack it.
pub const COMMAND_ID_LABEL: &str = "ssm.operator.dev/command-id";

/// Longest object name the API accepts (a DNS subdomain).
const MAX_NAME: usize = 253;
/// Longest label value the API accepts.
const MAX_LABEL_VALUE: usize = 63;

/// The child's name for `instance_id`: `<command>-<instance>`, lower-cased, anything a DNS
/// subdomain refuses replaced by `-`; past 253 characters (or when something was replaced, so
/// two ids cannot meet in one name) cut, with 8 hex digits of a hash of the full name.
pub fn child_name(command: &str, instance_id: &str) -> String {
    let full = format!("{command}-{instance_id}");
    let clean: String = full
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if clean == full && full.len() <= MAX_NAME {
        return full;
    }
    let hash = fnv32(&full);
    let room = MAX_NAME - 9;
    let stem = clean[..clean.len().min(room)].trim_end_matches(['-', '.']);
    format!("{stem}-{hash:08x}")
}

/// The label value naming `command`: the name itself when it fits 63 characters, else cut with
/// a hash (label values are shorter than names).
pub fn label_value(command: &str) -> String {
    if command.len() <= MAX_LABEL_VALUE {
        return command.to_string();
    }
    let stem = command[..MAX_LABEL_VALUE - 9].trim_end_matches(['-', '.']);
    format!("{stem}-{:08x}", fnv32(command))
}

fn fnv32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, byte| {
        (h ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The child of `command` (whose run is `command_id`) for the node `instance_id`.
pub fn child(command: &Command, command_id: &str, instance_id: &str) -> CommandInvocation {
    let name = command.name_any();
    let mut child = CommandInvocation::new(
        &child_name(&name, instance_id),
        CommandInvocationSpec {
            ttl_seconds_after_finished: None,
            command_id: command_id.to_string(),
            instance_id: instance_id.to_string(),
            plugin_name: None,
            region: command.spec.region.clone(),
        },
    );
    child.metadata = ObjectMeta {
        name: child.metadata.name.take(),
        namespace: command.namespace(),
        labels: Some(BTreeMap::from([
            (COMMAND_LABEL.to_string(), label_value(&name)),
            (COMMAND_ID_LABEL.to_string(), label_value(command_id)),
        ])),
        owner_references: command.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    };
    child
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CommandSpec;

    fn command(name: &str) -> Command {
        let mut c = Command::new(
            name,
            CommandSpec {
                document_name: "AWS-RunShellScript".into(),
                instance_ids: Some(vec!["i-0123456789abcdef0".into()]),
                region: Some("eu-west-1".into()),
                ..CommandSpec::default()
            },
        );
        c.metadata.namespace = Some("ops".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    #[test]
    fn a_child_is_named_labelled_and_owned_as_the_contract_says() {
        let child = child(&command("patch-web"), "cmd-1", "i-0123456789abcdef0");
        assert_eq!(child.name_any(), "patch-web-i-0123456789abcdef0");
        assert_eq!(child.namespace().as_deref(), Some("ops"));
        assert_eq!(child.labels()[COMMAND_LABEL], "patch-web");
        assert_eq!(child.labels()[COMMAND_ID_LABEL], "cmd-1");
        let owner = &child.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Command", "patch-web", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(child.spec.command_id, "cmd-1");
        assert_eq!(child.spec.instance_id, "i-0123456789abcdef0");
        assert_eq!(child.spec.region.as_deref(), Some("eu-west-1"));
        assert_eq!(child.spec.plugin_name, None);
    }

    #[test]
    fn long_or_odd_names_are_cut_and_hashed_into_valid_distinct_names() {
        let long = "a".repeat(250);
        let one = child_name(&long, "i-0123456789abcdef0");
        let two = child_name(&long, "i-0123456789abcdef1");
        assert_eq!(one.len(), 253);
        assert_ne!(one, two, "the hash keeps nodes apart");
        // SSM's pattern allows upper case and `_`, which names do not.
        let odd = child_name("web", "i-ABCDEF_1");
        assert!(odd.starts_with("web-i-abcdef-1-"), "{odd}");
        assert_ne!(odd, child_name("web", "i-abcdef-1"));
        let valid = |n: &str| {
            n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !n.ends_with('-')
        };
        assert!(valid(&one) && valid(&odd), "{one} {odd}");
        assert_eq!(label_value("web"), "web");
        let label = label_value(&long);
        assert_eq!(label.len(), 63);
        assert_ne!(label, label_value(&"a".repeat(251)));
    }
}
