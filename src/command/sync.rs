//! A `Command`'s children in step with SSM: one child `CommandInvocation` per node of the run
//! (the named instance ids, or the nodes SSM lists for targets), and none of an earlier run.
//! Creates and deletes go through the fenced [`Writer`](crate::k8s::writer::Writer).
//!
//! At fleet scale: children are found from their metadata alone, a page at a time; missing
//! ones are created [`CREATES_IN_FLIGHT`] at a time, in the order SSM lists their nodes (where
//! SSM lists them in the order it added them, as the simulator does, the longest waiting
//! first; SSM does not document the order), and what was created is remembered even when some
//! creates fail, so a retry resumes instead of posting every child again. A child
//! the API server refuses (an admission policy, a quota, RBAC) is reported on the `Command`
//! (counted in `status.refusedChildren`, a Warning Event) while its status goes on following
//! SSM; SSM's node list is not read again for it until the run grows or finishes.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::api::{Command, CommandInvocation};
use crate::aws::ssm::Scope;
use crate::command::children::{self, COMMAND_ID_LABEL, COMMAND_LABEL};
use crate::command::context::{Context, KnownChildren};
use crate::Error;

/// Child creates in flight at once for one `Command`.
pub const CREATES_IN_FLIGHT: usize = 16;
/// Children listed per page.
const LIST_PAGE: u32 = 500;

/// What one sync left for the status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Synced {
    /// Nodes whose child the API server refused, in all.
    pub(super) refused: usize,
    /// Those refused in this sync, with why (for the Event).
    pub(super) newly_refused: Vec<(String, String)>,
}

/// What became of one child's create.
enum Created {
    /// It exists and is ours (created now, or earlier).
    Ours(String),
    /// A `CommandInvocation` of that name belongs to something else; tried again later.
    NotOurs,
    /// The API server refused it for good (403, 422): reported, not retried until the run
    /// grows or finishes.
    Refused(String, String),
}

/// Creates the children SSM's nodes call for: the named instance ids, or the nodes SSM lists
/// for targets (asked only while fewer children are known, or refused, than SSM counts
/// targets, and once more when the run has finished with some refused).
pub(super) async fn sync_children(
    object: &Command,
    ctx: &Context,
    scope: &Scope,
    command_id: &str,
    target_count: i32,
    finished: bool,
) -> Result<Synced, Error> {
    let uid = object.uid().unwrap_or_default();
    let namespace = object
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<CommandInvocation> = Api::namespaced(ctx.client.clone(), &namespace);
    let remembered = ctx.memo(&uid, |m| {
        m.children
            .clone()
            .filter(|known| known.command_id == command_id)
    });
    let mut known = match remembered {
        Some(known) => known,
        None => KnownChildren {
            command_id: command_id.to_string(),
            names: existing_children(object, ctx, &api, command_id).await?,
            refused: BTreeMap::new(),
        },
    };
    let accounted = known.names.len() + known.refused.len();
    let enough = usize::try_from(target_count).unwrap_or(0) <= accounted;
    // Finished with a child for every target: nothing left to list (a walk of thousands of
    // nodes would only hold up the final status). Refused ones are tried once more.
    if enough && (!finished || known.refused.is_empty()) {
        let refused = known.refused.len();
        ctx.memo(&uid, |m| m.children = Some(known));
        return Ok(Synced {
            refused,
            newly_refused: Vec::new(),
        });
    }
    // Named nodes are the invocations SSM makes; only targets need SSM's list.
    let named = object
        .spec
        .instance_ids
        .clone()
        .filter(|ids| !ids.is_empty());
    let listed = match named {
        Some(ids) => Ok(ids),
        None => ctx.ssm.command_nodes(scope, command_id).await,
    };
    let nodes = match listed {
        Ok(nodes) => nodes,
        // The run's final status is written only once every child exists.
        Err(source) if finished => {
            return Err(Error::ListNodes {
                command_id: command_id.to_string(),
                source,
            })
        }
        Err(error) => {
            warn!(%error, "could not list the command's nodes; children follow later");
            let refused = known.refused.len();
            ctx.memo(&uid, |m| m.children = Some(known));
            return Ok(Synced {
                refused,
                newly_refused: Vec::new(),
            });
        }
    };
    let name = object.name_any();
    // Refused children are tried again only on the final pass. Created in the order SSM lists
    // the nodes (each once), which puts the longest waiting first where SSM lists them in the
    // order it added them.
    let mut seen = HashSet::new();
    let missing: Vec<String> = nodes
        .into_iter()
        .filter(|node| !known.names.contains(&children::child_name(&name, node)))
        .filter(|node| finished || !known.refused.contains_key(node))
        .filter(|node| seen.insert(node.clone()))
        .collect();
    let results: Vec<(String, Result<Created, Error>)> = futures::stream::iter(missing)
        .map(|node| async {
            let result = create_child(object, ctx, &api, command_id, &node).await;
            (node, result)
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .collect()
        .await;
    let mut newly_refused = Vec::new();
    let mut first_error = None;
    for (node, result) in results {
        match result {
            Ok(Created::Ours(child)) => {
                known.refused.remove(&node);
                known.names.insert(child);
            }
            Ok(Created::NotOurs) => {}
            Ok(Created::Refused(child, why)) => {
                if known.refused.insert(node, why.clone()).is_none() {
                    newly_refused.push((child, why));
                }
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let refused = known.refused.len();
    // What was created is remembered even when some creates failed: a retry resumes.
    ctx.memo(&uid, |m| m.children = Some(known));
    match first_error {
        Some(error) => Err(error),
        None => Ok(Synced {
            refused,
            newly_refused,
        }),
    }
}

/// Creates the child of `node` (through the fenced writer) and says what became of it.
async fn create_child(
    object: &Command,
    ctx: &Context,
    api: &Api<CommandInvocation>,
    command_id: &str,
    node: &str,
) -> Result<Created, Error> {
    let child = children::child(object, command_id, node);
    let name = child.name_any();
    match ctx.writer.create_child(&child).await {
        Ok(()) => {
            info!(child = %name, "child CommandInvocation created");
            Ok(Created::Ours(name))
        }
        Err(Error::CreateChild {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 409 => {
            // Ours from an earlier attempt, or someone else's (a child of a deleted Command
            // of the same name not yet collected): only ours counts.
            let existing = api
                .get_opt(&name)
                .await
                .map_err(|source| Error::ReadChild {
                    name: name.clone(),
                    source,
                })?;
            let uid = object.uid().unwrap_or_default();
            let ours = existing.is_some_and(|c| {
                c.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            });
            if ours {
                Ok(Created::Ours(name))
            } else {
                warn!(child = %name, "a CommandInvocation of that name belongs to something else; trying again later");
                Ok(Created::NotOurs)
            }
        }
        // Refused for this object (an admission policy or webhook: 422, 400) or for this
        // operator (RBAC, a quota: 403): the status goes on without this child.
        Err(Error::CreateChild {
            source: kube::Error::Api(status),
            ..
        }) if matches!(status.code, 400 | 403 | 422) => {
            warn!(child = %name, code = status.code, message = %status.message, "the API server refused the child");
            Ok(Created::Refused(
                name,
                format!("{} ({})", status.message, status.code),
            ))
        }
        Err(error) => Err(error),
    }
}

/// The names of the children of run `command_id` that exist; children of any other run are
/// deleted (a new generation's run replaces the old one's). Read from metadata, a page at a
/// time; only a child without the run label (created by an older operator) is read whole.
pub(super) async fn existing_children(
    object: &Command,
    ctx: &Context,
    api: &Api<CommandInvocation>,
    command_id: &str,
) -> Result<HashSet<String>, Error> {
    let selector = format!(
        "{COMMAND_LABEL}={}",
        children::label_value(&object.name_any())
    );
    let uid = object.uid().unwrap_or_default();
    let namespace = object.namespace().unwrap_or_default();
    let run = children::label_value(command_id);
    let mut names = HashSet::new();
    let mut params = ListParams::default().labels(&selector).limit(LIST_PAGE);
    loop {
        let page = api
            .list_metadata(&params)
            .await
            .map_err(|source| Error::ListChildren {
                selector: selector.clone(),
                source,
            })?;
        for child in &page.items {
            if !child.owner_references().iter().any(|o| o.uid == uid) {
                continue;
            }
            let name = child.name_any();
            let ours = match child.labels().get(COMMAND_ID_LABEL) {
                Some(label) => !command_id.is_empty() && *label == run,
                None => api
                    .get_opt(&name)
                    .await
                    .map_err(|source| Error::ReadChild {
                        name: name.clone(),
                        source,
                    })?
                    .is_some_and(|c| !command_id.is_empty() && c.spec.command_id == command_id),
            };
            if ours {
                names.insert(name);
            } else {
                ctx.writer.delete_child(&namespace, &name).await?;
                info!(child = %name, "child of an earlier run deleted");
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(names),
        }
    }
}

/// Deletes every child of `object` whatever its run (before a new generation is sent).
pub(super) async fn delete_all_children(
    object: &Command,
    ctx: &Context,
    api: &Api<CommandInvocation>,
) -> Result<(), Error> {
    existing_children(object, ctx, api, "").await.map(|_| ())
}
