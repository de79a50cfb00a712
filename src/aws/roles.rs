//! Which role each namespace's SSM calls use (`--namespace-roles`): a metadata-only watch of
//! Namespaces. `ssm.operator.dev/role-arn` (and optionally `ssm.operator.dev/external-id`)
//! names the role; without the annotation the operator's own identity is used. Only cluster
//! admins can annotate Namespaces, which is what makes this safe to offer.
//!
//! A change takes effect without a restart: the namespace's tracked resources are woken, their
//! reconcile re-keys them, and their commands are asked at once with the new identity. No
//! resource is reconciled before the first list of Namespaces is in, and a namespace this
//! process has not seen yet (created after that list, its watch event still on the way) has
//! no known role: its resources wait for it ([`NamespaceNotSeen`]), so a namespace's calls are
//! never made with the operator's own identity by mistake.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::aws::sts::Role;
use crate::runtime::metrics::Metrics;

/// How soon a resource waiting for its namespace to be seen is looked at again (the roles
/// watch usually catches up within milliseconds; such a reconcile makes no call at all).
pub const NAMESPACE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The Namespace annotation naming the role.
pub const ROLE_ARN: &str = "ssm.operator.dev/role-arn";
/// The Namespace annotation with the role's external id.
pub const EXTERNAL_ID: &str = "ssm.operator.dev/external-id";

/// The role per namespace, as last seen.
#[derive(Debug)]
pub struct Roles {
    enabled: bool,
    /// Every namespace seen, with the role it names (`None`: the operator's own identity).
    by_namespace: Mutex<HashMap<String, Option<Role>>>,
    synced: watch::Sender<bool>,
}

/// With `--namespace-roles`, the namespace's Namespace has not been seen (yet): whether it
/// names a role is unknown, and nothing may be asked for it until it is.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
#[error("namespace {0} not seen yet: its role (ssm.operator.dev/role-arn) is unknown")]
pub struct NamespaceNotSeen(pub String);

impl Roles {
    /// Without `--namespace-roles`: every call uses the operator's own identity.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            by_namespace: Mutex::new(HashMap::new()),
            synced: watch::Sender::new(true),
        }
    }

    /// With `--namespace-roles`: roles come from Namespace annotations once [`Roles::follow`]
    /// has listed them.
    pub fn enabled() -> Self {
        Self {
            enabled: true,
            by_namespace: Mutex::new(HashMap::new()),
            synced: watch::Sender::new(false),
        }
    }

    /// The role for resources in `namespace` (`None`: the operator's own identity), or
    /// [`NamespaceNotSeen`] while its Namespace has not been seen with `--namespace-roles`.
    pub fn role_for(&self, namespace: &str) -> Result<Option<Role>, NamespaceNotSeen> {
        if !self.enabled {
            return Ok(None);
        }
        self.by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .cloned()
            .ok_or_else(|| NamespaceNotSeen(namespace.to_string()))
    }

    /// Pure: the role a Namespace's annotations name (an empty ARN names none).
    pub fn role_of(namespace: &str, annotations: &BTreeMap<String, String>) -> Option<Role> {
        let arn = annotations.get(ROLE_ARN).map(|a| a.trim())?;
        (!arn.is_empty()).then(|| Role {
            namespace: namespace.to_string(),
            arn: arn.to_string(),
            external_id: annotations
                .get(EXTERNAL_ID)
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
        })
    }

    /// Records `namespace`'s role as seen; true when it changed (also when the namespace was
    /// not seen before: its resources waiting for it go on).
    pub fn observe(&self, namespace: &str, role: Option<Role>) -> bool {
        let mut roles = self
            .by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = roles.get(namespace) != Some(&role);
        roles.insert(namespace.to_string(), role);
        changed
    }

    /// Forgets a deleted namespace: its role is unknown again.
    pub fn forget(&self, namespace: &str) {
        self.by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace);
    }

    /// Completes once the roles are known (at once when disabled).
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Follows Namespace annotations until dropped; `changed` is called with each namespace
    /// whose role changed (the controller wakes its resources).
    pub async fn follow(
        self: Arc<Self>,
        client: Client,
        changed: impl Fn(&str) + Send + 'static,
        metrics: Arc<Metrics>,
    ) {
        if !self.enabled {
            return;
        }
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(ns) | Event::InitApply(ns)) => {
                    let name = ns.name_any();
                    let role = Self::role_of(&name, ns.annotations());
                    if self.observe(&name, role.clone()) {
                        info!(namespace = %name, role = ?role.as_ref().map(|r| &r.arn), "namespace role");
                        changed(&name);
                    }
                }
                Ok(Event::Delete(ns)) => self.forget(&ns.name_any()),
                Ok(Event::InitDone) => {
                    self.synced.send_replace(true);
                }
                Ok(Event::Init) => {}
                Err(error) => {
                    metrics.watch_failed();
                    warn!(%error, "watching Namespaces for roles failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_annotations_name_the_role_and_its_external_id() {
        let role = Roles::role_of(
            "team-a",
            &annotations(&[
                (ROLE_ARN, "arn:aws:iam::111122223333:role/ssm-reader"),
                (EXTERNAL_ID, "team-a-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(role.arn, "arn:aws:iam::111122223333:role/ssm-reader");
        assert_eq!(role.external_id.as_deref(), Some("team-a-secret"));
        assert_eq!(role.namespace, "team-a");
        assert_eq!(Roles::role_of("b", &annotations(&[])), None);
        assert_eq!(Roles::role_of("b", &annotations(&[(ROLE_ARN, " ")])), None);
        assert_eq!(
            Roles::role_of("b", &annotations(&[(ROLE_ARN, "arn:x"), (EXTERNAL_ID, "")]))
                .unwrap()
                .external_id,
            None
        );
    }

    #[test]
    fn changes_are_reported_and_disabled_roles_are_never_used() {
        let roles = Roles::enabled();
        let role = Roles::role_of("a", &annotations(&[(ROLE_ARN, "arn:1")]));
        assert!(roles.observe("a", role.clone()));
        assert!(!roles.observe("a", role.clone()), "same role: no change");
        assert_eq!(roles.role_for("a"), Ok(role.clone()));
        assert!(roles.observe("a", None), "annotation removed");
        assert_eq!(roles.role_for("a"), Ok(None));
        let off = Roles::disabled();
        off.observe("a", role);
        assert_eq!(off.role_for("a"), Ok(None));
        assert_eq!(off.role_for("never-seen"), Ok(None));
    }

    #[test]
    fn a_namespace_not_seen_yet_has_no_role_rather_than_the_operators_own() {
        let roles = Roles::enabled();
        assert_eq!(
            roles.role_for("new"),
            Err(NamespaceNotSeen("new".into())),
            "not 'no annotation'"
        );
        assert!(
            roles.observe("new", None),
            "first seen: its resources go on"
        );
        assert_eq!(roles.role_for("new"), Ok(None));
        roles.forget("new");
        assert_eq!(roles.role_for("new"), Err(NamespaceNotSeen("new".into())));
    }
}
