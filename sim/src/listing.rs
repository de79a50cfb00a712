//! ListCommandInvocations and ListCommands: filters, page sizes and `NextToken` cursors.
//!
//! A token names the next position to read in the listing it came from (`i:` a position in
//! one command, `n:` entries of one instance, `a:` a slot and position across all commands,
//! `c:` commands), so pages stay stable while commands are added. A page walks only its own
//! items and the ones it skips (hidden, or left out by a `Status` filter), and it stops
//! skipping after [`SKIP_LIMIT`] items: such a page holds fewer than `MaxResults` items (maybe
//! none) and still has a `NextToken`, so a call never costs more than a bounded walk.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::command_filters::commands_filters;
use crate::error::ApiError;
use crate::model::{CommandState, InvocationState, Store};
use crate::protocol as wire;
use crate::render::{command_invocation, command_wire};
use crate::script::Status;

/// Page size bounds of the list operations.
const MAX_RESULTS: i64 = 50;

/// Items one page may skip (hidden or filtered out) before it ends early with a `NextToken`.
pub(crate) const SKIP_LIMIT: usize = 1_000;

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
/// Each item is its cursor and, unless hidden or filtered out, what it shows. After
/// `skip_limit` items left out the page ends early (with the next cursor, if any).
fn take_page<C, T>(
    mut items: impl Iterator<Item = (C, Option<T>)>,
    max: usize,
    skip_limit: usize,
) -> (Vec<T>, Option<C>) {
    let mut page = Vec::new();
    let mut skipped = 0;
    while page.len() < max && skipped < skip_limit {
        match items.next() {
            Some((_, Some(item))) => page.push(item),
            Some((_, None)) => skipped += 1,
            None => return (page, None),
        }
    }
    (page, items.next().map(|(cursor, _)| cursor))
}

/// What a `Status` filter of ListCommandInvocations matches: the invocation's aggregate
/// `Status`, or, for the values naming a kind of failure, its `StatusDetails`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusFilter {
    /// The aggregate status is this one.
    Status(Status),
    /// The aggregate status details read this.
    Details(&'static str),
}

/// The `Status` values ListCommandInvocations accepts, as the SSM API reference lists them
/// (`CommandFilter`), with what each matches.
const STATUS_FILTERS: [(&str, StatusFilter); 13] = [
    ("Pending", StatusFilter::Status(Status::Pending)),
    ("InProgress", StatusFilter::Status(Status::InProgress)),
    ("Delayed", StatusFilter::Status(Status::Delayed)),
    ("Success", StatusFilter::Status(Status::Success)),
    ("Cancelled", StatusFilter::Status(Status::Cancelled)),
    ("Failed", StatusFilter::Status(Status::Failed)),
    // Delivery and execution time-outs alike.
    ("TimedOut", StatusFilter::Status(Status::TimedOut)),
    ("AccessDenied", StatusFilter::Details("Access Denied")),
    (
        "DeliveryTimedOut",
        StatusFilter::Details("Delivery Timed Out"),
    ),
    (
        "ExecutionTimedOut",
        StatusFilter::Details("Execution Timed Out"),
    ),
    ("Undeliverable", StatusFilter::Details("Undeliverable")),
    ("InvalidPlatform", StatusFilter::Details("Invalid Platform")),
    ("Terminated", StatusFilter::Details("Terminated")),
];

impl StatusFilter {
    fn parse(value: &str) -> Result<StatusFilter, ApiError> {
        STATUS_FILTERS
            .iter()
            .find(|(name, _)| *name == value)
            .map(|&(_, filter)| filter)
            .ok_or_else(|| {
                let valid: Vec<&str> = STATUS_FILTERS.iter().map(|(name, _)| *name).collect();
                ApiError::validation(format!(
                    "Invalid Status filter value '{value}' for ListCommandInvocations; valid values: {}",
                    valid.join(", ")
                ))
            })
    }

    fn matches(self, inv: &InvocationState, elapsed: std::time::Duration) -> bool {
        let view = inv.view(elapsed);
        match self {
            StatusFilter::Status(status) => view.status == status,
            StatusFilter::Details(details) => view.details == details,
        }
    }
}

/// The `Status` filters of a request (every one must match); other keys are ignored. A
/// filter without its key or value is a `ValidationException`, as in SSM.
fn status_filters(filters: Option<&[wire::CommandFilter]>) -> Result<Vec<StatusFilter>, ApiError> {
    let mut wanted = Vec::new();
    for filter in filters.unwrap_or_default() {
        let (Some(key), Some(value)) = (filter.key.as_deref(), filter.value.as_deref()) else {
            return Err(ApiError::validation(
                "1 validation error detected: a CommandFilter needs both key and value",
            ));
        };
        if key == "Status" {
            wanted.push(StatusFilter::parse(value)?);
        }
    }
    Ok(wanted)
}

pub(crate) fn list_command_invocations(
    store: &Store,
    req: wire::ListCommandInvocationsRequest,
    now: Instant,
) -> Result<wire::ListCommandInvocationsResponse, ApiError> {
    let max = page_size(req.max_results)?;
    let details = req.details.unwrap_or(false);
    let filters = status_filters(req.filters.as_deref())?;
    let instance = req.instance_id.as_deref().filter(|i| !i.is_empty());
    let token = req.next_token.as_deref();
    let show = |command: &CommandState, inv: &InvocationState| {
        let elapsed = command.elapsed(now);
        (inv.visible(elapsed) && filters.iter().all(|f| f.matches(inv, elapsed)))
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
                    SKIP_LIMIT,
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
                SKIP_LIMIT,
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
            let (page, next) = take_page(items, max, SKIP_LIMIT);
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

/// ListCommands. Besides the paging above: every `Filters` entry must match (see
/// [`crate::command_filters`]); a command made by SendCommand is left out until the
/// ListCommands lag has passed since it was made (an unknown `CommandId` is
/// `InvalidCommandId`, a lagging one an empty page); a command made from targets is listed
/// for an `InstanceId` only once that instance's invocation is visible.
pub(crate) fn list_commands(
    store: &Store,
    req: wire::ListCommandsRequest,
    now: Instant,
) -> Result<wire::ListCommandsResponse, ApiError> {
    let max = page_size(req.max_results)?;
    let filters = commands_filters(req.filters.as_deref())?;
    let lag = store.sending.list_lag;
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
    let show = |command: &CommandState| {
        let elapsed = command.elapsed(now);
        if command.sent && elapsed < lag {
            return None;
        }
        let targeted = instance.is_none_or(|id| {
            command
                .invocation(id)
                .is_some_and(|inv| !command.by_targets() || inv.visible(elapsed))
        });
        if !targeted {
            return None;
        }
        let rendered = command_wire(command, now);
        filters
            .iter()
            .all(|f| f.matches(command, &rendered))
            .then_some(rendered)
    };
    let (commands, next) = take_page(
        slots[..end]
            .iter()
            .enumerate()
            .rev()
            .map(|(k, &slot)| (k + 1, store.command_at(slot).and_then(show))),
        max,
        SKIP_LIMIT,
    );
    Ok(wire::ListCommandsResponse {
        commands,
        next_token: next.map(|end| format!("c:{end}")),
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::script::{Command, Invocation, Plugin};

    fn request(command_id: &str, token: Option<String>) -> wire::ListCommandInvocationsRequest {
        wire::ListCommandInvocationsRequest {
            command_id: Some(command_id.to_string()),
            details: Some(true),
            next_token: token,
            ..Default::default()
        }
    }

    fn status(value: &str) -> wire::CommandFilter {
        wire::CommandFilter {
            key: Some("Status".into()),
            value: Some(value.into()),
        }
    }

    #[test]
    fn status_filters_parse_the_documented_values() {
        assert_eq!(
            status_filters(Some(&[status("Success")])).unwrap(),
            [StatusFilter::Status(Status::Success)]
        );
        assert_eq!(
            status_filters(Some(&[status("DeliveryTimedOut")])).unwrap(),
            [StatusFilter::Details("Delivery Timed Out")]
        );
        // Other keys are ignored; a bad Status value or a half filter is rejected.
        let other = wire::CommandFilter {
            key: Some("DocumentName".into()),
            value: Some("AWS-RunShellScript".into()),
        };
        assert!(status_filters(Some(&[other])).unwrap().is_empty());
        assert!(status_filters(None).unwrap().is_empty());
        let err = status_filters(Some(&[status("Cancelling")])).unwrap_err();
        assert_eq!(err.code, "ValidationException");
        let half = wire::CommandFilter {
            key: Some("Status".into()),
            value: None,
        };
        assert!(status_filters(Some(&[half])).is_err());
    }

    #[test]
    fn a_filtered_page_stops_skipping_after_the_limit() {
        let mut command = Command::new("c");
        for i in 0..(SKIP_LIMIT + 10) {
            let plugin = if i == SKIP_LIMIT + 5 {
                Plugin::new("p").step(Duration::ZERO, Status::Failed)
            } else {
                Plugin::succeeding("p", Duration::ZERO)
            };
            command = command.invocation(Invocation::new(format!("i-{i}")).plugin(plugin));
        }
        let mut store = Store::default();
        let now = Instant::now();
        store.add(command, now, SystemTime::now());
        let mut req = request("c", None);
        req.filters = Some(vec![status("Failed")]);
        let first = list_command_invocations(&store, req, now).unwrap();
        assert!(first.command_invocations.is_empty());
        assert_eq!(first.next_token.as_deref(), Some("i:1000"));
        let mut req = request("c", first.next_token);
        req.filters = Some(vec![status("Failed")]);
        let second = list_command_invocations(&store, req, now).unwrap();
        assert_eq!(second.command_invocations.len(), 1);
        assert_eq!(second.command_invocations[0].instance_id, "i-1005");
        assert_eq!(second.next_token, None);
    }

    /// The fleet of `make bench`: 20 commands x 500 invocations, then every command walked
    /// page by page with details. Each page walks only its 50 items, so this stays fast
    /// (tens of milliseconds, even in a debug build).
    #[test]
    fn a_fleet_of_10000_pages_quickly() {
        let started = Instant::now();
        let mut store = Store::default();
        let now = Instant::now();
        for c in 0..20 {
            let mut command = Command::new(format!("cmd-{c}"));
            for i in 0..500u64 {
                let done = Duration::from_millis(i * 120);
                command = command.invocation(
                    Invocation::new(format!("i-{i:017x}"))
                        .plugin(Plugin::succeeding_at("p", done / 2, done).stdout("ok\n")),
                );
            }
            store.add(command, now, SystemTime::now());
        }
        let built = started.elapsed();
        let mut pages = 0;
        let mut seen = 0;
        let at = now + Duration::from_secs(30);
        for c in 0..20 {
            let mut token = None;
            loop {
                let page =
                    list_command_invocations(&store, request(&format!("cmd-{c}"), token), at)
                        .unwrap();
                pages += 1;
                seen += page.command_invocations.len();
                match page.next_token {
                    Some(next) => token = Some(next),
                    None => break,
                }
            }
        }
        let walked = started.elapsed() - built;
        assert_eq!((pages, seen), (200, 10_000));
        eprintln!("10,000 invocations built in {built:?}, 200 pages walked in {walked:?}");
        // Generous: a debug build on a loaded 2-core machine.
        assert!(walked < Duration::from_secs(10), "{walked:?}");
    }

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
        assert_eq!(take_page(items.clone(), 2, 10), (vec![0, 2], Some(3)));
        assert_eq!(take_page(items.clone(), 3, 10), (vec![0, 2, 4], None));
        // Two skipped (1 and 3): the page ends early, with the next cursor.
        assert_eq!(take_page(items.clone(), 3, 2), (vec![0, 2], Some(4)));
        assert_eq!(take_page(items, 3, 1), (vec![0], Some(2)));
    }
}
