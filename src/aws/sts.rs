//! The only code that talks to AWS STS: credentials for a namespace's role (`AssumeRole` with
//! the operator's own identity as source), built with aws-config's `AssumeRoleProvider` and
//! cached by the SDK's identity cache, which refreshes them before they expire.
//!
//! The role session name names the namespace (`ssm-operator-<namespace>`), so CloudTrail in
//! the target account shows whose calls they were.
//!
//! A failed `AssumeRole` surfaces in the SSM call that needed the credentials, as a dispatch
//! failure holding the provider's error and STS's answer below it; `ssm::classify` tells a
//! refusal STS will repeat (`AssumeRoleFailed`) from STS being unwell or unreachable
//! (transient, `SsmUnavailable`).

use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_sdk_ssm::config::SharedCredentialsProvider;

/// The role a namespace's SSM calls are made with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role {
    /// The namespace whose resources use it (part of the session name).
    pub namespace: String,
    /// `ssm.operator.dev/role-arn`.
    pub arn: String,
    /// `ssm.operator.dev/external-id`, if set.
    pub external_id: Option<String>,
}

/// Longest role session name STS accepts.
const MAX_SESSION_NAME: usize = 64;

impl Role {
    /// `ssm-operator-<namespace>`, within STS's 64 characters and its `[\w+=,.@-]` alphabet.
    pub fn session_name(&self) -> String {
        let name: String = format!("ssm-operator-{}", self.namespace)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(MAX_SESSION_NAME)
            .collect();
        name
    }

    /// Credentials for this role, assumed with `base`'s credentials, region and endpoints
    /// (`AWS_ENDPOINT_URL_STS`), refreshed before they expire.
    pub async fn credentials(&self, base: &SdkConfig) -> SharedCredentialsProvider {
        let mut builder = AssumeRoleProvider::builder(&self.arn)
            .session_name(self.session_name())
            .configure(base);
        if let Some(id) = &self.external_id {
            builder = builder.external_id(id);
        }
        SharedCredentialsProvider::new(builder.build().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(namespace: &str) -> Role {
        Role {
            namespace: namespace.into(),
            arn: "arn:aws:iam::111122223333:role/ssm-reader".into(),
            external_id: None,
        }
    }

    #[test]
    fn the_session_name_names_the_namespace_within_sts_limits() {
        assert_eq!(role("team-a").session_name(), "ssm-operator-team-a");
        let long = role(&"n".repeat(63));
        assert_eq!(long.session_name().len(), 64);
        assert!(long.session_name().starts_with("ssm-operator-nnn"));
    }
}
