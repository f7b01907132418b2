//! A bounded hand-over queue between threads that never blocks the producer.
//!
//! When the queue is full a push either replaces the oldest queued item with the new one
//! ([`Overflow::DropOldest`], "keep the newest": what a live display or link wants) or refuses
//! the new one ([`Overflow::DropNewest`]). Either way the push returns at once and says whether
//! an item was dropped, so the caller can count it. The capture → inference mailbox is this
//! queue with capacity 1 and `DropOldest`: inference always takes the newest frame and never
//! works through stale ones.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;

/// What a full queue does with a new item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Drop the oldest queued item and queue the new one (coalesce to the newest).
    #[default]
    DropOldest,
    /// Keep what is queued and drop the new item.
    DropNewest,
}

/// The result of [`Queue::pop`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// The oldest queued item.
    Item(T),
    /// Nothing arrived within the timeout.
    Timeout,
    /// The queue was closed and is empty.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A bounded multi-producer, multi-consumer queue with a drop policy.
pub struct Queue<T> {
    capacity: usize,
    overflow: Overflow,
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Queue<T> {
    /// A queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize, overflow: Overflow) -> Queue<T> {
        let capacity = capacity.max(1);
        Queue {
            capacity,
            overflow,
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock cannot leave the deque half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` without blocking. Returns the item that was dropped to make room (or the
    /// refused item itself), if any. Items pushed after [`Queue::close`] are returned as dropped.
    pub fn push(&self, item: T) -> Option<T> {
        let mut state = self.lock();
        if state.closed {
            return Some(item);
        }
        let dropped = if state.items.len() < self.capacity {
            state.items.push_back(item);
            None
        } else {
            match self.overflow {
                Overflow::DropOldest => {
                    let oldest = state.items.pop_front();
                    state.items.push_back(item);
                    oldest
                }
                Overflow::DropNewest => Some(item),
            }
        };
        drop(state);
        self.ready.notify_one();
        dropped
    }

    /// Takes the oldest item, waiting up to `timeout` for one. After [`Queue::close`] the items
    /// still queued are handed out first, then [`Pop::Closed`].
    pub fn pop(&self, timeout: Duration) -> Pop<T> {
        let state = self.lock();
        let (mut state, _) = self
            .ready
            .wait_timeout_while(state, timeout, |s| s.items.is_empty() && !s.closed)
            .unwrap_or_else(PoisonError::into_inner);
        match state.items.pop_front() {
            Some(item) => Pop::Item(item),
            None if state.closed => Pop::Closed,
            None => Pop::Timeout,
        }
    }

    /// Closes the queue: later pushes are refused and consumers see [`Pop::Closed`] once it is
    /// empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Removes and returns everything queued.
    pub fn drain(&self) -> Vec<T> {
        self.lock().items.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn mailbox_keeps_only_the_newest_and_counts_every_drop() {
        let mailbox = Queue::new(1, Overflow::DropOldest);
        let mut dropped = Vec::new();
        for frame in 0..5 {
            dropped.extend(mailbox.push(frame));
        }
        assert_eq!(dropped, [0, 1, 2, 3]);
        assert_eq!(mailbox.pop(NOW), Pop::Item(4));
        assert_eq!(mailbox.pop(NOW), Pop::Timeout);
    }

    #[test]
    fn drop_newest_keeps_the_queued_items() {
        let q = Queue::new(2, Overflow::DropNewest);
        assert_eq!(q.push('a'), None);
        assert_eq!(q.push('b'), None);
        assert_eq!(q.push('c'), Some('c'));
        assert_eq!(q.pop(NOW), Pop::Item('a'));
        assert_eq!(q.pop(NOW), Pop::Item('b'));
    }

    #[test]
    fn close_hands_out_the_rest_then_reports_closed() {
        let q = Queue::new(3, Overflow::DropOldest);
        q.push(1);
        q.push(2);
        q.close();
        assert_eq!(q.push(3), Some(3));
        assert_eq!(q.pop(NOW), Pop::Item(1));
        assert_eq!(q.pop(NOW), Pop::Item(2));
        assert_eq!(q.pop(NOW), Pop::Closed);
    }

    #[test]
    fn a_waiting_consumer_wakes_on_push_and_on_close() {
        let q = Arc::new(Queue::new(1, Overflow::DropOldest));
        let consumer = {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                let first = q.pop(Duration::from_secs(10));
                let second = q.pop(Duration::from_secs(10));
                (first, second)
            })
        };
        q.push(7);
        // Wait until the consumer has taken the item before closing, so the order is fixed.
        while q.lock().items.len() == 1 {
            thread::yield_now();
        }
        q.close();
        let (first, second) = consumer.join().unwrap();
        assert_eq!(first, Pop::Item(7));
        assert_eq!(second, Pop::Closed);
    }

    #[test]
    fn drain_empties_the_queue() {
        let q = Queue::new(4, Overflow::DropOldest);
        q.push(1);
        q.push(2);
        assert_eq!(q.drain(), [1, 2]);
        assert_eq!(q.pop(NOW), Pop::Timeout);
    }
}
