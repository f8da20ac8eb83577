//! The crossings still pending on one event loop (rules L1, L2).
//!
//! A loop that closes leaves its crossings with nobody to finish them: no drain runs, no task
//! completes. Each crossing therefore registers here while it is pending, so that the bridge can
//! end every one of them when its loop is seen closed (L1), and stop their Rust work when the
//! interpreter exits (L2).
//!
//! The set holds weak references: a crossing whose parts are all gone costs nothing but its
//! slot. Each crossing leaves the set once, on the loop thread, when it settles; closing the
//! loop takes the whole set at once, after which the set refuses new crossings.

use pyo3::prelude::*;
use std::sync::Weak;

/// What a pending crossing does when its loop closes or the interpreter exits.
pub(crate) trait LiveCrossing: Send + Sync {
    /// The crossing's loop is closed (L1). Called once, attached, on the bridge thread that
    /// noticed it (never a runtime thread); the loop thread runs this loop no more.
    fn loop_closed(&self, py: Python<'_>);

    /// The interpreter is exiting (L2): stop the Rust work now. Attached, exiting thread.
    /// Returns whether Rust work is still running and worth waiting for.
    fn exiting(&self) -> bool {
        false
    }

    /// Whether the crossing's Rust work is still running (polled during the exit's wait).
    fn producer_running(&self) -> bool {
        false
    }
}

/// A crossing's place in its loop's [`LiveSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveKey(usize);

/// A slab of pending crossings: a slot each, free slots reused.
#[derive(Default)]
pub(crate) struct LiveSet {
    slots: Vec<Option<Weak<dyn LiveCrossing>>>,
    free: Vec<usize>,
    len: usize,
    /// Crossings that ever joined (wrapping).
    joined: usize,
    /// Set once the loop is closed: no crossing may join any more.
    closed: bool,
}

impl LiveSet {
    /// Adds a crossing; `None` once the loop is closed.
    pub(crate) fn insert(&mut self, crossing: Weak<dyn LiveCrossing>) -> Option<LiveKey> {
        if self.closed {
            return None;
        }
        self.len += 1;
        self.joined = self.joined.wrapping_add(1);
        Some(LiveKey(match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(crossing);
                i
            }
            None => {
                self.slots.push(Some(crossing));
                self.slots.len() - 1
            }
        }))
    }

    /// Takes a crossing out. A key is removed once by its owner; after [`LiveSet::close`] the
    /// slots are gone and removing is a no-op.
    pub(crate) fn remove(&mut self, key: LiveKey) {
        if let Some(slot) = self.slots.get_mut(key.0) {
            if slot.take().is_some() {
                self.len -= 1;
                self.free.push(key.0);
                if self.len == 0 && self.slots.len() > 1024 {
                    // A burst is over: give its memory back.
                    self.slots = Vec::new();
                    self.free = Vec::new();
                }
            }
        }
    }

    /// How many crossings ever joined (wrapping): a cheap sign of activity.
    pub(crate) fn joined(&self) -> usize {
        self.joined
    }

    /// How many crossings are pending.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Refuses new crossings from now on and hands out the pending ones.
    pub(crate) fn close(&mut self) -> Vec<Weak<dyn LiveCrossing>> {
        self.closed = true;
        self.len = 0;
        self.free = Vec::new();
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }

    /// The pending crossings, left in place.
    pub(crate) fn snapshot(&self) -> Vec<Weak<dyn LiveCrossing>> {
        self.slots.iter().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Nothing;
    impl LiveCrossing for Nothing {
        fn loop_closed(&self, _py: Python<'_>) {}
    }

    fn weak(a: &Arc<Nothing>) -> Weak<dyn LiveCrossing> {
        let w: Weak<dyn LiveCrossing> = Arc::downgrade(a) as Weak<dyn LiveCrossing>;
        w
    }

    #[test]
    fn l1_slots_are_reused_and_counted() {
        let a = Arc::new(Nothing);
        let mut set = LiveSet::default();
        let k1 = set.insert(weak(&a)).unwrap();
        let k2 = set.insert(weak(&a)).unwrap();
        assert_eq!(set.len(), 2);
        set.remove(k1);
        set.remove(k1); // a second removal changes nothing
        assert_eq!(set.len(), 1);
        let k3 = set.insert(weak(&a)).unwrap();
        assert_eq!(k3, k1, "the freed slot is reused");
        assert_eq!(set.snapshot().len(), 2);
        assert_eq!(set.close().len(), 2);
        assert_eq!(set.len(), 0);
        assert!(set.insert(weak(&a)).is_none(), "a closed set refuses");
        set.remove(k2); // after close: a no-op
        assert_eq!(set.len(), 0);
    }
}
