//! ListCommandInvocations and ListCommands: filters, page sizes and `NextToken` cursors.
//!
//! A token names the next position to read in the listing it came from (`i:` a position in
//! one command, `n:` entries of one instance, `a:` a slot and position across all commands,
//! `c:` commands), so pages stay stable while commands are added. A page walks only its own
//! items and the hidden invocations it skips.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::error::ApiError;
use crate::model::{CommandState, InvocationState, Store};
use crate::protocol as wire;
use crate::render::{command_invocation, command_wire};

/// Page size bounds of the list operations.
const MAX_RESULTS: i64 = 50;

fn page_size(max_results: Option<i64>) -> Result<usize, ApiError> {
    match max_results {
        None => Ok(MAX_RESULTS as usize),
        Some(n) if (1..=MAX_RESULTS).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{n}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and {MAX_RESULTS}"
        ))),
    }
}

fn invalid_token() -> ApiError {
    ApiError::new("InvalidNextToken", "The specified token is not valid")
}

/// Parses a token `"<tag>:<n>[:<m>]"` made by the same kind of listing.
fn parse_token(token: Option<&str>, tag: &str) -> Result<Option<Vec<usize>>, ApiError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut parts = token.split(':');
    if parts.next() != Some(tag) {
        return Err(invalid_token());
    }
    parts
        .map(|p| p.parse::<usize>().map_err(|_| invalid_token()))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Takes up to `max` shown items; the token is the cursor of the next item, if any.
/// Each item is its cursor and, unless hidden, what it shows.
fn take_page<C, T>(
    mut items: impl Iterator<Item = (C, Option<T>)>,
    max: usize,
) -> (Vec<T>, Option<C>) {
    let mut page = Vec::new();
    while page.len() < max {
        match items.next() {
            Some((_, Some(item))) => page.push(item),
            Some((_, None)) => {}
            None => return (page, None),
        }
    }
    (page, items.next().map(|(cursor, _)| cursor))
}

pub(crate) fn list_command_invocations(
    store: &Store,
    req: wire::ListCommandInvocationsRequest,
    now: Instant,
) -> Result<wire::ListCommandInvocationsResponse, ApiError> {
    let max = page_size(req.max_results)?;
    let details = req.details.unwrap_or(false);
    let instance = req.instance_id.as_deref().filter(|i| !i.is_empty());
    let token = req.next_token.as_deref();
    let show = |command: &CommandState, inv: &InvocationState| {
        let elapsed = command.elapsed(now);
        inv.visible(elapsed)
            .then(|| command_invocation(command, inv, elapsed, details))
    };
    let command_id = req.command_id.as_deref().filter(|c| !c.is_empty());
    let (invocations, next) = match (command_id, instance) {
        // One command: its invocations in order; cursor = next position.
        (Some(command_id), instance) => {
            let start = match parse_token(token, "i")?.as_deref() {
                None => 0,
                Some([position]) => *position,
                Some(_) => return Err(invalid_token()),
            };
            let Some(command) = store.command(command_id) else {
                return Ok(wire::ListCommandInvocationsResponse {
                    command_invocations: Vec::new(),
                    next_token: None,
                });
            };
            let (page, next) = match instance {
                // At most one invocation: a single page.
                Some(id) => {
                    let shown = command.invocation(id).and_then(|inv| show(command, inv));
                    (shown.into_iter().collect(), None)
                }
                None => take_page(
                    command
                        .invocations
                        .iter()
                        .enumerate()
                        .skip(start)
                        .map(|(position, inv)| (position, show(command, inv))),
                    max,
                ),
            };
            (page, next.map(|p| format!("i:{p}")))
        }
        // One instance across commands, newest first; cursor = entries still to walk.
        (None, Some(instance)) => {
            let entries = store.instance_entries(instance);
            let end = match parse_token(token, "n")?.as_deref() {
                None => entries.len(),
                Some([end]) => (*end).min(entries.len()),
                Some(_) => return Err(invalid_token()),
            };
            let (page, next) = take_page(
                entries[..end]
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(k, &(slot, position))| {
                        let shown = store.command_at(slot).and_then(|command| {
                            command
                                .invocations
                                .get(position)
                                .and_then(|inv| show(command, inv))
                        });
                        (k + 1, shown)
                    }),
                max,
            );
            (page, next.map(|end| format!("n:{end}")))
        }
        // Everything: commands newest first, each command's invocations in order.
        (None, None) => {
            let count = store.command_count();
            let (start_slot, start_position) = match parse_token(token, "a")?.as_deref() {
                None => (count, 0),
                Some([slot, position]) => (slot.saturating_add(1), *position),
                Some(_) => return Err(invalid_token()),
            };
            let items = (0..start_slot.min(count))
                .rev()
                .filter_map(|slot| store.command_at(slot).map(|command| (slot, command)))
                .flat_map(|(slot, command)| {
                    let from = if slot + 1 == start_slot {
                        start_position
                    } else {
                        0
                    };
                    command
                        .invocations
                        .iter()
                        .enumerate()
                        .skip(from)
                        .map(move |(position, inv)| ((slot, position), show(command, inv)))
                });
            let (page, next) = take_page(items, max);
            (
                page,
                next.map(|(slot, position)| format!("a:{slot}:{position}")),
            )
        }
    };
    Ok(wire::ListCommandInvocationsResponse {
        command_invocations: invocations,
        next_token: next,
    })
}

pub(crate) fn list_commands(
    store: &Store,
    req: wire::ListCommandsRequest,
    now: Instant,
) -> Result<wire::ListCommandsResponse, ApiError> {
    let max = page_size(req.max_results)?;
    let instance = req.instance_id.as_deref().filter(|i| !i.is_empty());
    // The commands to list as slots, oldest first; the page walks them newest first.
    let slots: Vec<usize> = match req.command_id.as_deref().filter(|c| !c.is_empty()) {
        Some(command_id) => {
            let slot = store.slot(command_id).ok_or_else(|| {
                ApiError::new(
                    "InvalidCommandId",
                    format!("Command {command_id} not found"),
                )
            })?;
            let matches = instance.is_none_or(|id| {
                store
                    .command_at(slot)
                    .is_some_and(|c| c.invocation(id).is_some())
            });
            if matches {
                vec![slot]
            } else {
                Vec::new()
            }
        }
        None => match instance {
            Some(id) => store
                .instance_entries(id)
                .iter()
                .map(|&(slot, _)| slot)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            None => (0..store.command_count()).collect(),
        },
    };
    let end = match parse_token(req.next_token.as_deref(), "c")?.as_deref() {
        None => slots.len(),
        Some([end]) => (*end).min(slots.len()),
        Some(_) => return Err(invalid_token()),
    };
    let (commands, next) = take_page(
        slots[..end].iter().enumerate().rev().map(|(k, &slot)| {
            (
                k + 1,
                store
                    .command_at(slot)
                    .map(|command| command_wire(command, now)),
            )
        }),
        max,
    );
    Ok(wire::ListCommandsResponse {
        commands,
        next_token: next.map(|end| format!("c:{end}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_page_sizes_are_checked() {
        assert_eq!(page_size(None).unwrap(), 50);
        assert_eq!(page_size(Some(1)).unwrap(), 1);
        assert!(page_size(Some(0)).is_err());
        assert!(page_size(Some(51)).is_err());
        assert_eq!(parse_token(Some("a:3:4"), "a").unwrap(), Some(vec![3, 4]));
        assert_eq!(parse_token(None, "a").unwrap(), None);
        assert!(parse_token(Some("i:3"), "a").is_err());
        assert!(parse_token(Some("a:x"), "a").is_err());
    }

    #[test]
    fn pages_skip_hidden_items() {
        let items = (0..5).map(|i| (i, (i % 2 == 0).then_some(i)));
        assert_eq!(take_page(items.clone(), 2), (vec![0, 2], Some(3)));
        assert_eq!(take_page(items, 3), (vec![0, 2, 4], None));
    }
}
