//! Sets of address ranges, for the runtime's views of the address space.

use std::collections::BTreeMap;

/// A set of disjoint address ranges `[start, end)`.
#[derive(Default)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn contains(&self, addr: u64) -> bool {
        self.ranges
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &end)| addr < end)
    }

    pub fn remove(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
        }
    }

    pub fn insert(&mut self, start: u64, end: u64) {
        self.remove(start, end);
        self.ranges.insert(start, end);
    }

    /// The parts of the set inside `[start, end)`.
    pub fn within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.ranges
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s.max(start), e.min(end)))
            .collect()
    }
}
