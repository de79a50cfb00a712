//! Pure: what an EventBridge message from the push queue says. Events are hints, never truth:
//! they carry no exit code or output and may be lost, duplicated, late or out of order, so they
//! only tell the tracker which command (and node) to re-read from SSM.
//!
//! Counted: `source: aws.ssm` with detail-type `EC2 Command Invocation Status-change
//! Notification` (detail `command-id`, `instance-id`, `status`) or `EC2 Command Status-change
//! Notification` (detail `command-id`, `status`, no node). Anything else is foreign; a body that
//! is not such JSON is malformed. Both are deleted and counted, never fatal.

use serde_json::Value;

/// Detail-type of an invocation (one node) status change.
pub const INVOCATION_CHANGE: &str = "EC2 Command Invocation Status-change Notification";
/// Detail-type of a command status change.
pub const COMMAND_CHANGE: &str = "EC2 Command Status-change Notification";

/// A re-read hint from one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The event's region (`region`), if it names one.
    pub region: Option<String>,
    /// `detail.command-id`.
    pub command_id: String,
    /// `detail.instance-id`: one node; `None` for a command-level event.
    pub instance_id: Option<String>,
    /// `detail.status` as the event reports it (a hint only).
    pub status: String,
}

impl Hint {
    /// The event reports a status after which nothing changes: worth a read at once.
    /// (Events of running states are left to the next round: the terminal one matters.)
    pub fn is_terminal(&self) -> bool {
        crate::aws::ssm::is_terminal(&self.status)
    }
}

/// What a message body is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An SSM status change.
    Hint(Hint),
    /// Well-formed, but not an event this operator uses (other source or detail-type).
    Foreign,
    /// Not an EventBridge event, or one missing what its detail-type promises.
    Malformed,
}

/// Parses one SQS message body (the event JSON as EventBridge delivers it).
pub fn parse(body: &str) -> Parsed {
    let Ok(event) = serde_json::from_str::<Value>(body) else {
        return Parsed::Malformed;
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    let (Some(source), Some(kind)) = (
        event.get("source").and_then(text),
        event.get("detail-type").and_then(text),
    ) else {
        return Parsed::Malformed;
    };
    if source != "aws.ssm" || (kind != INVOCATION_CHANGE && kind != COMMAND_CHANGE) {
        return Parsed::Foreign;
    }
    let detail = event.get("detail");
    let field = |name: &str| {
        detail
            .and_then(|d| d.get(name))
            .and_then(text)
            .filter(|s| !s.is_empty())
    };
    let (Some(command_id), Some(status)) = (field("command-id"), field("status")) else {
        return Parsed::Malformed;
    };
    let instance_id = field("instance-id");
    if kind == INVOCATION_CHANGE && instance_id.is_none() {
        return Parsed::Malformed;
    }
    Parsed::Hint(Hint {
        region: event.get("region").and_then(text),
        command_id,
        instance_id: if kind == INVOCATION_CHANGE {
            instance_id
        } else {
            None
        },
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, detail: Value) -> String {
        json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": kind,
            "source": "aws.ssm",
            "account": "111122223333",
            "time": "2026-11-30T10:00:00Z",
            "region": "eu-west-1",
            "resources": ["arn:aws:ec2:eu-west-1:111122223333:instance/i-0123456789abcdef0"],
            "detail": detail,
        })
        .to_string()
    }

    #[test]
    fn an_invocation_change_names_the_command_and_node() {
        let body = event(
            INVOCATION_CHANGE,
            json!({
                "command-id": "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11",
                "document-name": "AWS-RunShellScript",
                "instance-id": "i-0123456789abcdef0",
                "requested-date-time": "2026-11-30T09:59:58Z",
                "status": "Success",
            }),
        );
        let Parsed::Hint(hint) = parse(&body) else {
            panic!("a hint")
        };
        assert_eq!(hint.command_id, "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11");
        assert_eq!(hint.instance_id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(hint.region.as_deref(), Some("eu-west-1"));
        assert!(hint.is_terminal());
    }

    #[test]
    fn a_command_change_names_only_the_command() {
        let body = event(
            COMMAND_CHANGE,
            json!({"command-id": "c-1", "status": "InProgress", "expire-after": "x"}),
        );
        let Parsed::Hint(hint) = parse(&body) else {
            panic!("a hint")
        };
        assert_eq!(hint.instance_id, None);
        assert!(!hint.is_terminal());
    }

    #[test]
    fn foreign_and_malformed_bodies_are_told_apart() {
        assert_eq!(parse("not json"), Parsed::Malformed);
        assert_eq!(parse("[1,2]"), Parsed::Malformed);
        assert_eq!(parse(r#"{"source":"aws.ssm"}"#), Parsed::Malformed);
        let ec2 = json!({"source": "aws.ec2", "detail-type": INVOCATION_CHANGE, "detail": {}});
        assert_eq!(parse(&ec2.to_string()), Parsed::Foreign);
        let other =
            json!({"source": "aws.ssm", "detail-type": "Parameter Store Change", "detail": {}});
        assert_eq!(parse(&other.to_string()), Parsed::Foreign);
        let no_node = event(
            INVOCATION_CHANGE,
            json!({"command-id": "c", "status": "Success"}),
        );
        assert_eq!(parse(&no_node), Parsed::Malformed);
        let no_status = event(COMMAND_CHANGE, json!({"command-id": "c"}));
        assert_eq!(parse(&no_status), Parsed::Malformed);
        let wrong_type = event(
            COMMAND_CHANGE,
            json!({"command-id": 7, "status": "Success"}),
        );
        assert_eq!(parse(&wrong_type), Parsed::Malformed);
    }
}
