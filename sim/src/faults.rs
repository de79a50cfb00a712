//! Injected faults: a queue of misbehaviours that hit the next requests, whatever the operation.

use std::collections::VecDeque;

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
}

impl Fault {
    fn count(&self) -> u32 {
        match *self {
            Fault::Throttle { count }
            | Fault::ServerError { count }
            | Fault::DropConnection { count } => count,
        }
    }

    fn hit(&self) -> Hit {
        match self {
            Fault::Throttle { .. } => Hit::Throttle,
            Fault::ServerError { .. } => Hit::ServerError,
            Fault::DropConnection { .. } => Hit::DropConnection,
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
}
