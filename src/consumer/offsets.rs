//! Offset tracking: per partition, the offsets begun and not yet final.
//! The committable position is the contiguous finished prefix, whatever
//! order deliveries finish in; it never moves backwards.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct PartitionState {
    /// Bumped on every assignment, so late results of an earlier
    /// assignment of the same partition are ignored.
    generation: u64,
    pending: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: i64,
    /// First offset begun in this assignment: nothing before it is ours to store.
    base: Option<i64>,
    /// Last offset reported as stored (all before it and it are final).
    stored: Option<i64>,
    /// Set when `stored` moved and the consumer has not been told yet.
    unpushed: bool,
    /// Messages finished so far, and what the watchdog last saw of it (and
    /// when): progress is noticed by the watchdog, not clocked per message.
    finished: u64,
    seen: (u64, Instant),
}

impl PartitionState {
    fn new(generation: u64) -> Self {
        PartitionState { generation, pending: BTreeSet::new(), next: 0, base: None, stored: None, unpushed: false, finished: 0, seen: (0, Instant::now()) }
    }
}

/// Offsets of one consumer (one topic and group).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionState>,
    generations: u64,
}

impl OffsetTracker {
    /// A partition was assigned: start it afresh and return its generation.
    pub fn assign(&mut self, partition: i32) -> u64 {
        self.generations += 1;
        let g = self.generations;
        self.partitions.insert(partition, PartitionState::new(g));
        g
    }

    /// A partition was revoked: forget it; its late results are ignored.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    pub fn generation(&self, partition: i32) -> Option<u64> {
        self.partitions.get(&partition).map(|p| p.generation)
    }

    /// A message was read: it is pending until [`finish`](Self::finish).
    /// Returns the generation to hand back on finish; assigns the partition
    /// if it was not known (first message before the assignment callback).
    /// Returns `None` for an offset already read in this assignment (a
    /// re-fetch after pause/resume): it must not be delivered twice.
    pub fn begin(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let generations = &mut self.generations;
        let p = self.partitions.entry(partition).or_insert_with(|| {
            *generations += 1;
            PartitionState::new(*generations)
        });
        if p.base.is_some() && offset < p.next {
            return None;
        }
        if p.pending.is_empty() {
            // Idle until now: the stall clock starts with this message.
            p.finished += 1;
        }
        p.pending.insert(offset);
        p.base.get_or_insert(offset);
        p.next = p.next.max(offset + 1);
        Some(p.generation)
    }

    /// Partitions with unfinished messages and no progress for `limit`.
    /// Called periodically (the watchdog); stalls are measured from the first
    /// call that saw no progress.
    pub fn stalled(&mut self, limit: Duration) -> Vec<(i32, usize, Duration)> {
        let mut out = Vec::new();
        for (id, p) in self.partitions.iter_mut() {
            if p.seen.0 != p.finished {
                p.seen = (p.finished, Instant::now());
            } else if !p.pending.is_empty() && p.seen.1.elapsed() >= limit {
                out.push((*id, p.pending.len(), p.seen.1.elapsed()));
            }
        }
        out
    }

    /// A message's outcome is final. Returns the offset to store (the last
    /// offset of the contiguous finished prefix) when it moved forward.
    pub fn finish(&mut self, partition: i32, offset: i64, generation: u64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if p.generation != generation || !p.pending.remove(&offset) {
            return None;
        }
        p.finished += 1;
        let done_through = match p.pending.first() {
            Some(first) => first - 1,
            None => p.next - 1,
        };
        if p.base.is_none_or(|b| done_through < b) || p.stored.is_some_and(|s| s >= done_through) {
            return None;
        }
        p.stored = Some(done_through);
        p.unpushed = true;
        Some(done_through)
    }

    /// Positions (one past the last final offset) that moved since the last
    /// call, for `partitions` or all when `None`: what to store in the consumer.
    pub fn take_positions(&mut self, partitions: Option<&[i32]>) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (id, p) in self.partitions.iter_mut() {
            if p.unpushed && partitions.is_none_or(|only| only.contains(id)) {
                p.unpushed = false;
                if let Some(s) = p.stored {
                    out.push((*id, s + 1));
                }
            }
        }
        out
    }

    /// Partitions currently assigned.
    pub fn partition_ids(&self) -> std::collections::HashSet<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Messages begun and not yet final, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }

    pub fn pending_in(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map(|p| p.pending.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_the_contiguous_finished_prefix() {
        let mut t = OffsetTracker::default();
        let g = t.begin(0, 10).unwrap();
        t.begin(0, 11);
        t.begin(0, 12);
        assert_eq!(t.finish(0, 11, g), None, "10 is not final yet");
        assert_eq!(t.finish(0, 12, g), None);
        assert_eq!(t.finish(0, 10, g), Some(12));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.take_positions(None), vec![(0, 13)], "the position is one past the last final offset");
        assert_eq!(t.take_positions(None), vec![], "told once");
    }

    #[test]
    fn in_order_finishes_store_each_offset() {
        let mut t = OffsetTracker::default();
        let g = t.begin(3, 0).unwrap();
        assert_eq!(t.finish(3, 0, g), Some(0));
        t.begin(3, 1);
        t.begin(3, 2);
        assert_eq!(t.finish(3, 1, g), Some(1));
        assert_eq!(t.finish(3, 2, g), Some(2));
    }

    #[test]
    fn results_of_a_revoked_assignment_are_ignored() {
        let mut t = OffsetTracker::default();
        let old = t.begin(1, 5).unwrap();
        t.revoke(1);
        assert_eq!(t.finish(1, 5, old), None);
        let new = t.assign(1);
        t.begin(1, 5);
        assert_eq!(t.finish(1, 5, old), None, "stale generation");
        assert_eq!(t.finish(1, 5, new), Some(5));
    }

    #[test]
    fn never_moves_backwards() {
        let mut t = OffsetTracker::default();
        let g = t.begin(0, 7).unwrap();
        assert_eq!(t.finish(0, 7, g), Some(7));
        // An older offset read again (a re-fetch) is refused, and the
        // stored position never moves back.
        assert_eq!(t.begin(0, 3), None);
        assert_eq!(t.begin(0, 7), None);
        t.begin(0, 9).unwrap();
        assert_eq!(t.finish(0, 9, g), Some(9));
    }
}
