//! Injected faults: a queue of misbehaviours that hit the next requests, whatever the operation.

use std::collections::VecDeque;
use std::time::Duration;

/// A misbehaviour to inject with [`crate::Simulator::inject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next `count` requests answer HTTP 400 `ThrottlingException` "Rate exceeded".
    Throttle {
        /// How many requests it hits.
        count: u32,
    },
    /// The next `count` requests answer HTTP 500 `InternalServerError`.
    ServerError {
        /// How many requests it hits.
        count: u32,
    },
    /// The next `count` requests get their connection closed without an answer.
    DropConnection {
        /// How many requests it hits.
        count: u32,
    },
    /// The next `count` requests are answered normally, but only after `delay` (on top of any
    /// [`crate::Simulator::set_latency`]): a client whose attempt timeout is shorter gives up
    /// first, as it would with an overloaded endpoint.
    Slow {
        /// How many requests it hits.
        count: u32,
        /// How long each of them waits before its answer is computed and sent.
        delay: Duration,
    },
}

/// What one request suffers, taken from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Answer ThrottlingException.
    Throttle,
    /// Answer InternalServerError.
    ServerError,
    /// Close the connection.
    DropConnection,
    /// Answer normally after this delay.
    Slow(Duration),
}

impl Fault {
    fn count(&self) -> u32 {
        match *self {
            Fault::Throttle { count }
            | Fault::ServerError { count }
            | Fault::DropConnection { count }
            | Fault::Slow { count, .. } => count,
        }
    }

    fn hit(&self) -> Hit {
        match self {
            Fault::Throttle { .. } => Hit::Throttle,
            Fault::ServerError { .. } => Hit::ServerError,
            Fault::DropConnection { .. } => Hit::DropConnection,
            Fault::Slow { delay, .. } => Hit::Slow(*delay),
        }
    }
}

/// Queued faults, consumed in the order injected, one request at a time.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    /// Each entry with the number of requests it still hits (never 0).
    queue: VecDeque<(Hit, u32)>,
}

impl FaultQueue {
    /// Appends a fault; one with count 0 does nothing.
    pub(crate) fn push(&mut self, fault: Fault) {
        if fault.count() > 0 {
            self.queue.push_back((fault.hit(), fault.count()));
        }
    }

    /// Forgets every queued fault.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Takes the fault the next request suffers, if any.
    pub(crate) fn next_hit(&mut self) -> Option<Hit> {
        let (hit, left) = self.queue.front_mut()?;
        let hit = *hit;
        *left -= 1;
        if *left == 0 {
            self.queue.pop_front();
        }
        Some(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order() {
        let mut q = FaultQueue::default();
        q.push(Fault::Throttle { count: 2 });
        q.push(Fault::ServerError { count: 0 });
        q.push(Fault::DropConnection { count: 1 });
        assert_eq!(q.next_hit(), Some(Hit::Throttle));
        assert_eq!(q.next_hit(), Some(Hit::Throttle));
        assert_eq!(q.next_hit(), Some(Hit::DropConnection));
        assert_eq!(q.next_hit(), None);
        q.push(Fault::ServerError { count: 3 });
        q.clear();
        assert_eq!(q.next_hit(), None);
    }

    #[test]
    fn slow_replies_carry_their_delay_and_queue_like_the_others() {
        let mut q = FaultQueue::default();
        let delay = Duration::from_millis(1500);
        q.push(Fault::Slow { count: 2, delay });
        q.push(Fault::Slow {
            count: 0,
            delay: Duration::from_secs(9),
        });
        q.push(Fault::ServerError { count: 1 });
        assert_eq!(q.next_hit(), Some(Hit::Slow(delay)));
        assert_eq!(q.next_hit(), Some(Hit::Slow(delay)));
        assert_eq!(q.next_hit(), Some(Hit::ServerError));
        assert_eq!(q.next_hit(), None);
    }
}
