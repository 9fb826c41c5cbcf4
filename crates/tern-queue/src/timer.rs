//! A hierarchical timer wheel for scheduled (waiting) messages.
//!
//! Millions of messages can be waiting for their next attempt at once, so
//! the structure holding them must be cheap per entry and O(1) to insert
//! into and pop from. [`TimerWheel`] keeps six levels of 64 slots; level
//! `L` slots each span `64^L` ticks. An entry is filed at the level of the
//! highest bit in which its due tick differs from the wheel's current tick,
//! and moves down (cascades) at most five times before it is popped, so
//! both operations are O(1) amortised. Finding the next non-empty slot uses
//! a 64-bit occupancy mask per level, so idle stretches cost nothing.
//!
//! Each entry is the caller's item plus a 32-bit tick (wrapping, relative to
//! the wheel's current tick), so a 16-byte message id costs 20 bytes plus
//! `Vec` slack. Due times are rounded *up* to a tick: an item is never
//! popped before its due time and at most one tick after it.
//!
//! Times are wall-clock ([`SystemTime`]) because due times are derived from
//! message creation times and `set_scheduling` windows. The wheel is not
//! synchronised; the owner wraps it in a mutex and never holds that across
//! an `.await`.

use std::time::{Duration, SystemTime};

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 6;
/// Entries further ahead than this many ticks are clamped to it.
const MAX_AHEAD: u64 = u32::MAX as u64;
/// A drained level-0 slot keeps its buffer for reuse up to this capacity.
const KEEP_CAPACITY: usize = 4096;

#[derive(Debug)]
struct Entry<T> {
    /// Due tick, truncated to 32 bits; recovered relative to `current`.
    tick: u32,
    item: T,
}

#[derive(Debug)]
struct Level<T> {
    occupied: u64,
    slots: Vec<Vec<Entry<T>>>,
}

impl<T> Level<T> {
    fn new() -> Self {
        Self {
            occupied: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
        }
    }
}

/// A hierarchical timer wheel keyed by wall-clock due time.
#[derive(Debug)]
pub struct TimerWheel<T> {
    origin: SystemTime,
    tick_nanos: u64,
    /// The next tick not yet processed. No occupied slot has a deadline
    /// earlier than this, and every entry in the wheel is due at or after it.
    current: u64,
    levels: Vec<Level<T>>,
    /// Items inserted with a due time already in the past.
    overdue: Vec<T>,
    len: usize,
}

fn slot_range(level: usize) -> u64 {
    1u64 << (SLOT_BITS as usize * level)
}

fn level_range(level: usize) -> u64 {
    1u64 << (SLOT_BITS as usize * (level + 1))
}

impl<T> TimerWheel<T> {
    /// A wheel whose tick 0 is `origin`, with resolution `tick` (at least
    /// 1 ms; a one-second tick covers 136 years ahead).
    pub fn new(origin: SystemTime, tick: Duration) -> Self {
        let tick_nanos = tick.as_nanos().clamp(1_000_000, u64::MAX as u128) as u64;
        Self {
            origin,
            tick_nanos,
            current: 0,
            levels: (0..LEVELS).map(|_| Level::new()).collect(),
            overdue: Vec::new(),
            len: 0,
        }
    }

    /// A wheel starting now with the given resolution.
    pub fn with_tick(tick: Duration) -> Self {
        Self::new(SystemTime::now(), tick)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ticks_since_origin(&self, time: SystemTime, round_up: bool) -> u64 {
        let nanos = time
            .duration_since(self.origin)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let tick = u128::from(self.tick_nanos);
        let mut ticks = nanos / tick;
        if round_up && !nanos.is_multiple_of(tick) {
            ticks += 1;
        }
        ticks.min(u64::MAX as u128 / 2) as u64
    }

    fn time_of_tick(&self, tick: u64) -> SystemTime {
        let nanos = u128::from(tick) * u128::from(self.tick_nanos);
        let duration = Duration::new(
            (nanos / 1_000_000_000).min(u64::MAX as u128) as u64,
            (nanos % 1_000_000_000) as u32,
        );
        self.origin.checked_add(duration).unwrap_or(self.origin)
    }

    /// Schedule `item` to be popped once `due` has passed.
    pub fn insert(&mut self, due: SystemTime, item: T) {
        let tick = self.ticks_since_origin(due, true);
        self.len += 1;
        if tick < self.current {
            self.overdue.push(item);
        } else {
            self.file(tick.min(self.current + MAX_AHEAD), item);
        }
    }

    /// Put an entry with `tick >= current` into its slot.
    fn file(&mut self, tick: u64, item: T) {
        let differing = (self.current ^ tick) | (SLOTS as u64 - 1);
        let top_bit = 63 - differing.leading_zeros() as usize;
        let level = (top_bit / SLOT_BITS as usize).min(LEVELS - 1);
        let slot = ((tick >> (SLOT_BITS as usize * level)) as usize) & (SLOTS - 1);
        let level = &mut self.levels[level];
        level.occupied |= 1 << slot;
        level.slots[slot].push(Entry {
            tick: tick as u32,
            item,
        });
    }

    /// Recover the full tick of an entry (always within 2^32 of `current`).
    fn full_tick(&self, tick: u32) -> u64 {
        self.current + u64::from(tick.wrapping_sub(self.current as u32))
    }

    /// The earliest occupied slot: (level, slot, deadline tick).
    ///
    /// A slot's deadline is its first tick. Every level is consulted: after
    /// an idle jump the current tick can sit exactly at the start of an
    /// occupied higher-level slot, which is then due before any lower-level
    /// entry filed since. On a tie the higher level wins, so its entries
    /// cascade down before the lower slot is emitted.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for (index, level) in self.levels.iter().enumerate() {
            if level.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS as usize * index;
            let current_slot = ((self.current >> shift) as usize) & (SLOTS - 1);
            let rotated = level.occupied.rotate_right(current_slot as u32);
            let slot = (current_slot + rotated.trailing_zeros() as usize) % SLOTS;
            let level_start = self.current & !(level_range(index) - 1);
            let mut deadline = level_start + slot as u64 * slot_range(index);
            if slot < current_slot {
                // Only the top level wraps: its next rotation.
                deadline += level_range(index);
            }
            if best.is_none_or(|(_, _, earliest)| deadline <= earliest) {
                best = Some((index, slot, deadline));
            }
        }
        best
    }

    /// Move every item due at or before `now` into `out`, in due order
    /// (items in the same tick in no particular order).
    pub fn pop_due_into(&mut self, now: SystemTime, out: &mut Vec<T>) {
        let before = out.len();
        out.append(&mut self.overdue);
        let target = self.ticks_since_origin(now, false);
        while let Some((level, slot, deadline)) = self.next_expiration() {
            if deadline > target {
                break;
            }
            let mut entries = std::mem::take(&mut self.levels[level].slots[slot]);
            self.levels[level].occupied &= !(1 << slot);
            self.current = self.current.max(deadline);
            if level == 0 {
                out.extend(entries.drain(..).map(|e| e.item));
                if entries.capacity() <= KEEP_CAPACITY {
                    self.levels[0].slots[slot] = entries;
                }
            } else {
                for entry in entries {
                    let tick = self.full_tick(entry.tick);
                    self.file(tick, entry.item);
                }
            }
        }
        self.current = self.current.max(target + 1);
        self.len -= out.len() - before;
    }

    /// Every item due at or before `now`.
    pub fn pop_due(&mut self, now: SystemTime) -> Vec<T> {
        let mut out = Vec::new();
        self.pop_due_into(now, &mut out);
        out
    }

    /// When the next item may become due, for sleeping until then. This is
    /// never later than the earliest due item (it can be earlier: a far
    /// slot is opened at its start and its items cascade). `None` when
    /// empty; a time in the past when something is already due.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        if !self.overdue.is_empty() {
            return Some(self.time_of_tick(self.current.saturating_sub(1)));
        }
        self.next_expiration()
            .map(|(_, _, deadline)| self.time_of_tick(deadline))
    }

    /// Remove the first item scheduled for `due` that satisfies `matches`.
    /// Cost: a scan of the (at most six) slots that can hold that due time.
    pub fn remove(&mut self, due: SystemTime, mut matches: impl FnMut(&T) -> bool) -> Option<T> {
        let tick = self.ticks_since_origin(due, true);
        if tick < self.current {
            let pos = self.overdue.iter().position(&mut matches)?;
            self.len -= 1;
            return Some(self.overdue.swap_remove(pos));
        }
        let tick = tick.min(self.current + MAX_AHEAD);
        for index in 0..LEVELS {
            let slot = ((tick >> (SLOT_BITS as usize * index)) as usize) & (SLOTS - 1);
            let level = &mut self.levels[index];
            let entries = &mut level.slots[slot];
            if let Some(pos) = entries
                .iter()
                .position(|e| e.tick == tick as u32 && matches(&e.item))
            {
                let entry = entries.swap_remove(pos);
                if entries.is_empty() {
                    level.occupied &= !(1 << slot);
                }
                self.len -= 1;
                return Some(entry.item);
            }
        }
        None
    }

    /// Take every item out, due or not (admin bounce, rebind, shutdown).
    pub fn drain_all(&mut self) -> Vec<T> {
        let mut out = std::mem::take(&mut self.overdue);
        for level in &mut self.levels {
            level.occupied = 0;
            for slot in &mut level.slots {
                out.extend(std::mem::take(slot).into_iter().map(|e| e.item));
            }
        }
        self.len = 0;
        out
    }

    /// [`Self::drain_all`] with each item's due time (rounded up to its
    /// tick; overdue items get the current tick's time), so a caller can
    /// put items back where they were (admin rebind).
    pub fn drain_all_with_due(&mut self) -> Vec<(SystemTime, T)> {
        let overdue_at = self.time_of_tick(self.current.saturating_sub(1));
        let mut out: Vec<(SystemTime, T)> = std::mem::take(&mut self.overdue)
            .into_iter()
            .map(|item| (overdue_at, item))
            .collect();
        for index in 0..LEVELS {
            for slot in 0..SLOTS {
                let entries = std::mem::take(&mut self.levels[index].slots[slot]);
                for entry in entries {
                    let due = self.time_of_tick(self.full_tick(entry.tick));
                    out.push((due, entry.item));
                }
            }
            self.levels[index].occupied = 0;
        }
        self.len = 0;
        out
    }

    /// Up to `limit` items with their due times (as in
    /// [`Self::drain_all_with_due`]), without taking them out, in no
    /// particular order (admin inspection).
    pub fn sample_with_due(&self, limit: usize) -> Vec<(SystemTime, &T)> {
        let overdue_at = self.time_of_tick(self.current.saturating_sub(1));
        let mut out: Vec<(SystemTime, &T)> = self
            .overdue
            .iter()
            .take(limit)
            .map(|item| (overdue_at, item))
            .collect();
        for level in &self.levels {
            for slot in &level.slots {
                for entry in slot {
                    if out.len() >= limit {
                        return out;
                    }
                    out.push((self.time_of_tick(self.full_tick(entry.tick)), &entry.item));
                }
            }
        }
        out
    }

    /// Keep only the items for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.overdue.retain(&mut keep);
        let mut len = self.overdue.len();
        for level in &mut self.levels {
            for (slot, entries) in level.slots.iter_mut().enumerate() {
                entries.retain(|e| keep(&e.item));
                if entries.is_empty() {
                    level.occupied &= !(1 << slot);
                }
                len += entries.len();
            }
        }
        self.len = len;
    }

    /// Bytes reserved by the wheel's buffers (entries and slot headers),
    /// excluding anything the items themselves point to.
    pub fn allocated_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Entry<T>>();
        let header = std::mem::size_of::<Vec<Entry<T>>>();
        let slots: usize = self
            .levels
            .iter()
            .flat_map(|l| l.slots.iter())
            .map(|s| s.capacity() * entry + header)
            .sum();
        slots + self.overdue.capacity() * std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn origin() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn at(secs: u64) -> SystemTime {
        origin() + Duration::from_secs(secs)
    }

    #[test]
    fn pops_in_due_order_never_early() {
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        for (due, id) in [(5, 'a'), (70, 'b'), (4000, 'c'), (300_000, 'd'), (5, 'e')] {
            wheel.insert(at(due), id);
        }
        assert_eq!(wheel.len(), 5);
        assert!(wheel.pop_due(at(4)).is_empty());
        let mut got = wheel.pop_due(at(5));
        got.sort();
        assert_eq!(got, vec!['a', 'e']);
        assert!(wheel.pop_due(at(69)).is_empty());
        assert_eq!(wheel.pop_due(at(70)), vec!['b']);
        assert!(wheel.pop_due(at(3999)).is_empty());
        assert_eq!(wheel.pop_due(at(1_000_000)), vec!['c', 'd']);
        assert!(wheel.is_empty());
    }

    #[test]
    fn sub_tick_due_rounds_up() {
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        wheel.insert(origin() + Duration::from_millis(1500), 1);
        assert!(
            wheel
                .pop_due(origin() + Duration::from_millis(1999))
                .is_empty()
        );
        assert_eq!(wheel.pop_due(at(2)), vec![1]);
    }

    #[test]
    fn past_due_items_come_out_on_next_pop() {
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        wheel.pop_due(at(100));
        wheel.insert(at(50), "late");
        wheel.insert(origin() - Duration::from_secs(10), "before origin");
        assert!(wheel.next_deadline().unwrap() <= at(100));
        let mut got = wheel.pop_due(at(100));
        got.sort();
        assert_eq!(got, vec!["before origin", "late"]);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn next_deadline_is_never_after_earliest_item() {
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        wheel.insert(at(10_000), 1);
        let deadline = wheel.next_deadline().unwrap();
        assert!(deadline <= at(10_000));
        // Following the deadlines leads to the item without popping early.
        let mut now = deadline;
        loop {
            let got = wheel.pop_due(now);
            if !got.is_empty() {
                assert_eq!(now, at(10_000));
                break;
            }
            now = wheel.next_deadline().unwrap();
        }
    }

    #[test]
    fn random_schedule_matches_a_sorted_reference() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        let mut reference: Vec<(u64, u32)> = Vec::new();
        let mut now = 0u64;
        let mut next_id = 0u32;
        for _ in 0..200 {
            for _ in 0..50 {
                // Mix of near, far and already-past due times.
                let due = match rng.random_range(0..4) {
                    0 => now.saturating_sub(rng.random_range(0..10)),
                    1 => now + rng.random_range(0..100),
                    2 => now + rng.random_range(0..100_000),
                    _ => now + rng.random_range(0..10_000_000),
                };
                wheel.insert(at(due), next_id);
                reference.push((due, next_id));
                next_id += 1;
            }
            now += rng.random_range(0..200_000);
            let mut got = wheel.pop_due(at(now));
            got.sort();
            let mut expected: Vec<u32> = reference
                .iter()
                .filter(|(due, _)| *due <= now)
                .map(|(_, id)| *id)
                .collect();
            expected.sort();
            reference.retain(|(due, _)| *due > now);
            assert_eq!(got, expected, "at {now}");
            assert_eq!(wheel.len(), reference.len());
        }
    }

    #[test]
    fn crossing_a_32_bit_tick_boundary() {
        // Tick 1 ms: 2^32 ticks is about 50 days.
        let mut wheel = TimerWheel::new(origin(), Duration::from_millis(1));
        let near_wrap = origin() + Duration::from_millis((1u64 << 32) - 5);
        wheel.pop_due(near_wrap);
        wheel.insert(near_wrap + Duration::from_millis(10), 'x');
        wheel.insert(near_wrap + Duration::from_secs(3600), 'y');
        assert!(
            wheel
                .pop_due(near_wrap + Duration::from_millis(9))
                .is_empty()
        );
        assert_eq!(
            wheel.pop_due(near_wrap + Duration::from_millis(10)),
            vec!['x']
        );
        assert_eq!(
            wheel.pop_due(near_wrap + Duration::from_secs(3600)),
            vec!['y']
        );
    }

    #[test]
    fn drain_with_due_keeps_each_items_time() {
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        wheel.pop_due(at(100));
        wheel.insert(at(50), 'o'); // already overdue
        wheel.insert(at(150), 'a');
        wheel.insert(at(5000), 'b'); // a higher level
        wheel.insert(at(4_000_000), 'c'); // higher still
        // Sampling sees the same items and times, and takes nothing out.
        assert_eq!(wheel.sample_with_due(2).len(), 2, "limit honoured");
        let mut sampled: Vec<(SystemTime, char)> = wheel
            .sample_with_due(10)
            .into_iter()
            .map(|(t, c)| (t, *c))
            .collect();
        sampled.sort();
        assert_eq!(wheel.len(), 4);
        let mut all = wheel.drain_all_with_due();
        all.sort();
        assert_eq!(all.len(), 4);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert!(all[0].0 <= at(101) && all[0].1 == 'o', "{all:?}");
        assert_eq!(sampled, all);
        assert_eq!(
            &all[1..],
            &[(at(150), 'a'), (at(5000), 'b'), (at(4_000_000), 'c')]
        );
        assert!(wheel.sample_with_due(10).is_empty(), "drained");
        // Put back, they come due as before.
        for (due, item) in all {
            wheel.insert(due, item);
        }
        assert_eq!(wheel.pop_due(at(4999)), vec!['o', 'a']);
    }

    #[test]
    fn remove_retain_and_drain() {
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        for id in 0..10u32 {
            wheel.insert(at(1000 + u64::from(id)), id);
        }
        wheel.pop_due(at(500)); // cascade so entries sit at various levels
        assert_eq!(wheel.remove(at(1003), |id| *id == 3), Some(3));
        assert_eq!(wheel.remove(at(1003), |id| *id == 3), None);
        assert_eq!(wheel.remove(at(1004), |id| *id == 5), None);
        assert_eq!(wheel.len(), 9);
        wheel.retain(|id| id % 2 == 0);
        assert_eq!(wheel.len(), 5);
        let mut rest = wheel.drain_all();
        rest.sort();
        assert_eq!(rest, vec![0, 2, 4, 6, 8]);
        assert!(wheel.is_empty());
        assert!(wheel.pop_due(at(5000)).is_empty());
    }

    #[test]
    fn entries_are_compact() {
        assert_eq!(std::mem::size_of::<Entry<[u8; 16]>>(), 20);
        let mut wheel = TimerWheel::new(origin(), Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(1);
        for i in 0..100_000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            wheel.insert(at(rng.random_range(0..7 * 86400)), id);
        }
        let per_entry = wheel.allocated_bytes() / wheel.len();
        assert!(per_entry <= 64, "{per_entry} bytes per entry");
    }
}

#[cfg(test)]
mod churn_tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn step_by_step_churn_matches_reference() {
        let origin = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s: u64| origin + Duration::from_secs(s);
        let mut rng = StdRng::seed_from_u64(5);
        let mut wheel = TimerWheel::new(origin, Duration::from_secs(1));
        let mut reference = std::collections::BTreeMap::<u32, u64>::new();
        for id in 0..2000u32 {
            let due = rng.random_range(0..100_000);
            wheel.insert(at(due), id);
            reference.insert(id, due);
        }
        for now in 1..20_000u64 {
            let mut got = wheel.pop_due(at(now));
            got.sort();
            let mut expected: Vec<u32> = reference
                .iter()
                .filter(|(_, due)| **due <= now)
                .map(|(id, _)| *id)
                .collect();
            expected.sort();
            assert_eq!(got, expected, "at {now}");
            for id in got {
                let due = now + rng.random_range(1200..2400);
                wheel.insert(at(due), id);
                reference.insert(id, due);
            }
        }
    }
}
