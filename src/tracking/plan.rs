//! Pure: which round of one command starts now, and when the command next needs the loop.
//! The round loop (`rounds.rs`) gathers a command's [`RoundFacts`] and applies the
//! [`RoundPlan`]; the choice itself is here, where it can be tested without a tracker.
//!
//! Nothing here may read a clock, take a lock or call SSM: the facts and `now` come in, the
//! plan goes out.
//!
//! A command runs at most one walk and one round of Gets at once. A regular round asks about
//! every step, hinted ones included. Hinted nodes are read with one `GetCommandInvocation`
//! each while they are no more than the pages a walk costs, else with one walk.
//!
//! A new resource (or generation) is first read by [`first_read`]'s choice: resources keep
//! arriving while a fleet runs, and reading each on its own would cost a call apiece.

use std::time::{Duration, Instant};

use crate::tracking::heard::Heard;

/// What a round reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RoundKind {
    /// Every tracked step, on the command's clock.
    Regular,
    /// The hinted nodes, with one `GetCommandInvocation` each.
    Gets,
    /// The hinted nodes, too many for Gets, with a walk (which answers every step).
    HintWalk,
}

/// What the choice of a command's next round depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RoundFacts {
    /// A walk runs (a regular round, or hinted nodes too many for Gets).
    pub(super) walking: bool,
    /// A round reading hinted nodes with one Get each runs.
    pub(super) getting: bool,
    /// When the next regular round is due (the command's round clock).
    pub(super) regular_due: Instant,
    /// When the hinted nodes are to be read, if any are waiting.
    pub(super) hint_due: Option<Instant>,
    /// How many nodes are hinted.
    pub(super) hinted: usize,
    /// What a walk of the command costs, in pages.
    pub(super) walk_cost: usize,
}

/// What the loop does about one command now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RoundPlan {
    /// Start a round of this kind (its end wakes the loop again).
    Start(RoundKind),
    /// Nothing starts now; the command needs the loop again at this time (`None`: only when a
    /// running round ends).
    Wait(Option<Instant>),
}

/// Which round of a command with `facts` starts at `now`, if any, else when the command next
/// needs the loop.
pub(super) fn plan(facts: &RoundFacts, now: Instant) -> RoundPlan {
    if !facts.walking && facts.regular_due <= now {
        // The round asks about every step, hinted ones included.
        return RoundPlan::Start(RoundKind::Regular);
    }
    // Hinted nodes are read beside a running walk when Gets will do; a second walk
    // waits for the first (its end wakes this loop).
    let kind = if facts.hinted <= facts.walk_cost {
        (!facts.getting).then_some(RoundKind::Gets)
    } else {
        (!facts.walking).then_some(RoundKind::HintWalk)
    };
    let hint_due = facts.hint_due.filter(|_| kind.is_some());
    if let (Some(kind), Some(true)) = (kind, hint_due.map(|at| at <= now)) {
        return RoundPlan::Start(kind);
    }
    let regular_due = (!facts.walking).then_some(facts.regular_due);
    RoundPlan::Wait([regular_due, hint_due].into_iter().flatten().min())
}

/// How a new resource (or a new generation of one) is first read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FirstRead {
    /// Like a hinted node: within `HINT_COALESCE`, with one Get (or a walk, when many are
    /// new at once), and (polling) the command's backoff starts over so that more news comes soon.
    Now,
    /// Its command's next regular round is due soon enough: the resource joins it.
    JoinRound,
    /// The push queue said its node is running (or spoke of its command and not of this
    /// node's end), and the command is a fleet: its terminal event brings the read (else the
    /// command's regular rounds do).
    AwaitEvent,
    /// Its node's final answer was read before the resource existed ([`reads_ahead`]), or a
    /// round is reading it now: that answer is its first read (the node is read again only if
    /// that read gave no final answer).
    ReadAhead,
}

/// What the first read of a new resource depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ArrivalFacts {
    /// The push queue delivers.
    pub(super) push_active: bool,
    /// What the queue said about the resource's node before the resource existed.
    pub(super) heard: Option<Heard>,
    /// The queue spoke about the resource's command lately.
    pub(super) command_heard: bool,
    /// Resources its command has tracked since it was first tracked, this one included
    /// (finished ones too: a fleet stays a fleet while its last nodes run).
    pub(super) arrived: usize,
    /// Its node's final answer was read ahead, before the resource existed (or a round is
    /// reading it ahead now).
    pub(super) read_ahead: bool,
    /// When its command's next regular round is due.
    pub(super) regular_due: Instant,
    /// How soon a round must come for a new resource to join it (`--poll-interval-min`).
    pub(super) join_within: Duration,
}

/// A command that has tracked at least this many resources is a fleet (as many as a List page
/// holds): its resources come from a `Command` or a pipeline's loop, and what gates on them
/// waits for `Finished`, so a node still running need not be read at its resource's creation.
/// Fewer (a pipeline's one resource, a Helm release) are read at once, so that their status
/// shows at once.
pub(super) const FLEET: usize = crate::aws::ssm::PAGE_SIZE as usize;

/// How a new resource with `facts` is first read at `now`: not at all when its final answer
/// was read ahead; a node heard to have ended at once; a fleet's node heard running when its
/// event comes; else with the command's next round if that is due within `join_within`, else
/// at once.
pub(super) fn first_read(facts: &ArrivalFacts, now: Instant) -> FirstRead {
    if facts.read_ahead {
        return FirstRead::ReadAhead;
    }
    match facts.heard {
        Some(Heard::Ended) => return FirstRead::Now,
        Some(Heard::Running) | None
            if facts.push_active
                && facts.arrived >= FLEET
                && (facts.heard.is_some() || facts.command_heard) =>
        {
            return FirstRead::AwaitEvent
        }
        _ => {}
    }
    if facts.regular_due <= now + facts.join_within {
        FirstRead::JoinRound
    } else {
        FirstRead::Now
    }
}

/// Whether a command that has tracked `arrived` resources, and keeps `unclaimed` final answers
/// of nodes no resource tracks yet, keeps one more (read when its node's end event comes, or
/// found on a page its walk reads anyway).
///
/// Resources keep arriving while a fleet runs, many after their node ended; reading such a
/// node when its event comes, instead of when its resource appears, spreads the reads over
/// the fleet's run (at the rate nodes finish) instead of piling them up at the end. Only a
/// fleet does it (its nodes get resources: a `Command`'s children, a pipeline's loop), counting
/// only resources that name no step (only they take such an answer), and at most as many
/// answers wait as such resources came: a command tracked for a few of its nodes wastes at
/// most that many reads per 10 minutes (answers expire).
pub(super) fn reads_ahead(arrived: usize, unclaimed: usize) -> bool {
    arrived >= FLEET && unclaimed < arrived
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command at rest: no round runs, the next regular round is `regular_in` away, no
    /// hinted node, and a walk costs 10 pages.
    fn idle(now: Instant, regular_in: Duration) -> RoundFacts {
        RoundFacts {
            walking: false,
            getting: false,
            regular_due: now + regular_in,
            hint_due: None,
            hinted: 0,
            walk_cost: 10,
        }
    }

    /// `facts` with `hinted` nodes to read at `due`.
    fn hinted(facts: RoundFacts, hinted: usize, due: Instant) -> RoundFacts {
        RoundFacts {
            hinted,
            hint_due: Some(due),
            ..facts
        }
    }

    const SOON: Duration = Duration::from_millis(50);
    const LATER: Duration = Duration::from_secs(30);

    #[test]
    fn a_regular_round_starts_when_due_and_no_walk_runs() {
        let now = Instant::now();
        assert_eq!(
            plan(&idle(now, Duration::ZERO), now),
            RoundPlan::Start(RoundKind::Regular),
            "due exactly now"
        );
        let overdue = idle(now, Duration::ZERO);
        assert_eq!(
            plan(&overdue, now + LATER),
            RoundPlan::Start(RoundKind::Regular),
            "overdue"
        );
        let getting = RoundFacts {
            getting: true,
            ..idle(now, Duration::ZERO)
        };
        assert_eq!(
            plan(&getting, now),
            RoundPlan::Start(RoundKind::Regular),
            "a round of Gets does not hold a walk back"
        );
    }

    #[test]
    fn a_regular_round_not_yet_due_waits_for_its_due_time() {
        let now = Instant::now();
        assert_eq!(
            plan(&idle(now, LATER), now),
            RoundPlan::Wait(Some(now + LATER))
        );
    }

    #[test]
    fn a_due_regular_round_waits_while_a_walk_runs_and_its_end_wakes_the_loop() {
        let now = Instant::now();
        let walking = RoundFacts {
            walking: true,
            ..idle(now, Duration::ZERO)
        };
        assert_eq!(plan(&walking, now), RoundPlan::Wait(None));
    }

    #[test]
    fn a_due_regular_round_reads_the_hinted_nodes_too() {
        let now = Instant::now();
        let few = hinted(idle(now, Duration::ZERO), 3, now);
        assert_eq!(plan(&few, now), RoundPlan::Start(RoundKind::Regular));
        let many = hinted(idle(now, Duration::ZERO), 50, now);
        assert_eq!(plan(&many, now), RoundPlan::Start(RoundKind::Regular));
    }

    #[test]
    fn few_hinted_nodes_are_read_with_gets() {
        let now = Instant::now();
        let few = hinted(idle(now, LATER), 3, now);
        assert_eq!(plan(&few, now), RoundPlan::Start(RoundKind::Gets));
        let as_many_as_pages = hinted(idle(now, LATER), 10, now);
        assert_eq!(
            plan(&as_many_as_pages, now),
            RoundPlan::Start(RoundKind::Gets),
            "as many nodes as a walk has pages: still Gets"
        );
    }

    #[test]
    fn few_hinted_nodes_are_read_with_gets_beside_a_running_walk() {
        let now = Instant::now();
        let walking = RoundFacts {
            walking: true,
            ..hinted(idle(now, Duration::ZERO), 1, now)
        };
        assert_eq!(plan(&walking, now), RoundPlan::Start(RoundKind::Gets));
    }

    #[test]
    fn few_hinted_nodes_wait_while_a_round_of_gets_runs() {
        let now = Instant::now();
        let getting = RoundFacts {
            getting: true,
            ..hinted(idle(now, LATER), 3, now)
        };
        assert_eq!(
            plan(&getting, now),
            RoundPlan::Wait(Some(now + LATER)),
            "the hint's due time is no reason to wake: the running Gets' end is"
        );
        let busy = RoundFacts {
            walking: true,
            ..getting
        };
        assert_eq!(plan(&busy, now), RoundPlan::Wait(None));
    }

    #[test]
    fn many_hinted_nodes_are_read_with_one_walk() {
        let now = Instant::now();
        let many = hinted(idle(now, LATER), 11, now);
        assert_eq!(plan(&many, now), RoundPlan::Start(RoundKind::HintWalk));
        let getting = RoundFacts {
            getting: true,
            ..many
        };
        assert_eq!(
            plan(&getting, now),
            RoundPlan::Start(RoundKind::HintWalk),
            "a round of Gets does not hold a walk back"
        );
    }

    #[test]
    fn many_hinted_nodes_wait_for_a_running_walk_without_waking_the_loop() {
        let now = Instant::now();
        let walking = RoundFacts {
            walking: true,
            ..hinted(idle(now, Duration::ZERO), 11, now)
        };
        assert_eq!(plan(&walking, now), RoundPlan::Wait(None));
    }

    #[test]
    fn hinted_nodes_not_yet_due_wait_for_the_earlier_of_the_hint_and_the_regular_round() {
        let now = Instant::now();
        let hint_first = hinted(idle(now, LATER), 3, now + SOON);
        assert_eq!(plan(&hint_first, now), RoundPlan::Wait(Some(now + SOON)));
        let regular_first = hinted(idle(now, SOON), 11, now + LATER);
        assert_eq!(plan(&regular_first, now), RoundPlan::Wait(Some(now + SOON)));
        let walking = RoundFacts {
            walking: true,
            ..hinted(idle(now, Duration::ZERO), 3, now + SOON)
        };
        assert_eq!(
            plan(&walking, now),
            RoundPlan::Wait(Some(now + SOON)),
            "the Gets beside a running walk are due then; the regular round is not"
        );
        assert_eq!(
            plan(&walking, now + SOON),
            RoundPlan::Start(RoundKind::Gets),
            "due at that time"
        );
    }

    #[test]
    fn hinted_nodes_that_cannot_start_set_no_due_time() {
        let now = Instant::now();
        // Too many for Gets while a walk runs: the walk's end wakes the loop, not the hint.
        let walking = RoundFacts {
            walking: true,
            ..hinted(idle(now, Duration::ZERO), 11, now + SOON)
        };
        assert_eq!(plan(&walking, now), RoundPlan::Wait(None));
        // Few, while Gets run: the regular round's time counts, the earlier hint's does not.
        let getting = RoundFacts {
            getting: true,
            ..hinted(idle(now, LATER), 3, now + SOON)
        };
        assert_eq!(plan(&getting, now), RoundPlan::Wait(Some(now + LATER)));
    }

    fn arrival(now: Instant, regular_in: Duration) -> ArrivalFacts {
        ArrivalFacts {
            push_active: false,
            heard: None,
            command_heard: false,
            arrived: 1,
            read_ahead: false,
            regular_due: now + regular_in,
            join_within: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_new_resource_joins_a_round_due_soon_else_is_read_at_once() {
        let now = Instant::now();
        let soon = arrival(now, Duration::from_secs(2));
        assert_eq!(first_read(&soon, now), FirstRead::JoinRound);
        let overdue = arrival(now, Duration::ZERO);
        assert_eq!(
            first_read(&overdue, now + LATER),
            FirstRead::JoinRound,
            "a round due (or running) now"
        );
        let backed_off = arrival(now, Duration::from_millis(2001));
        assert_eq!(first_read(&backed_off, now), FirstRead::Now);
    }

    #[test]
    fn a_node_heard_to_have_ended_is_read_at_once_even_with_a_round_due() {
        let now = Instant::now();
        for push_active in [false, true] {
            let ended = ArrivalFacts {
                push_active,
                heard: Some(Heard::Ended),
                command_heard: true,
                arrived: 500,
                ..arrival(now, Duration::ZERO)
            };
            assert_eq!(first_read(&ended, now), FirstRead::Now);
        }
    }

    #[test]
    fn a_fleet_node_heard_running_waits_for_its_event_while_push_delivers() {
        let now = Instant::now();
        let running = ArrivalFacts {
            push_active: true,
            heard: Some(Heard::Running),
            command_heard: true,
            arrived: FLEET,
            ..arrival(now, LATER)
        };
        assert_eq!(first_read(&running, now), FirstRead::AwaitEvent);
        let not_yet_heard = ArrivalFacts {
            heard: None,
            ..running
        };
        assert_eq!(
            first_read(&not_yet_heard, now),
            FirstRead::AwaitEvent,
            "its command's nodes are heard: this one has not ended yet"
        );
        let command_unheard = ArrivalFacts {
            command_heard: false,
            ..not_yet_heard
        };
        assert_eq!(
            first_read(&command_unheard, now),
            FirstRead::Now,
            "nothing heard of its command (sent before the queue, or not routed): read it"
        );
    }

    #[test]
    fn few_resources_or_no_push_are_read_without_waiting_for_events() {
        let now = Instant::now();
        let running = ArrivalFacts {
            push_active: true,
            heard: Some(Heard::Running),
            command_heard: true,
            arrived: FLEET - 1,
            ..arrival(now, LATER)
        };
        assert_eq!(
            first_read(&running, now),
            FirstRead::Now,
            "a pipeline's few resources show their status at once"
        );
        let quiet_queue = ArrivalFacts {
            push_active: false,
            arrived: 500,
            ..running
        };
        assert_eq!(first_read(&quiet_queue, now), FirstRead::Now);
    }

    #[test]
    fn a_node_whose_answer_was_read_ahead_is_not_read_again() {
        let now = Instant::now();
        for heard in [None, Some(Heard::Ended), Some(Heard::Running)] {
            for push_active in [false, true] {
                let facts = ArrivalFacts {
                    push_active,
                    heard,
                    command_heard: true,
                    arrived: FLEET,
                    read_ahead: true,
                    ..arrival(now, Duration::ZERO)
                };
                assert_eq!(first_read(&facts, now), FirstRead::ReadAhead);
            }
        }
    }

    #[test]
    fn a_fleet_reads_ahead_at_most_as_many_nodes_as_resources_came() {
        assert!(!reads_ahead(0, 0), "nothing tracked");
        assert!(!reads_ahead(FLEET - 1, 0), "a pipeline's few resources");
        assert!(reads_ahead(FLEET, 0));
        assert!(reads_ahead(FLEET, FLEET - 1));
        assert!(!reads_ahead(FLEET, FLEET), "as many waiting as came");
        assert!(reads_ahead(5_000, 4_999));
        assert!(!reads_ahead(5_000, 5_000));
    }
}
