//! Measures the timer wheel with 1,000,000 waiting messages: insert and pop
//! throughput, and heap bytes per entry as seen by a counting allocator.
//!
//! Run with `cargo run --release -p tern-queue --example timer_bench`
//! (an optional argument sets the number of entries).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tern_queue::TimerWheel;

/// Wraps the system allocator and tracks bytes currently allocated.
struct CountingAllocator;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A spool id is 16 bytes.
type MessageId = [u8; 16];

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let origin = SystemTime::now();
    let mut rng = StdRng::seed_from_u64(2024);

    // Due times spread like a retry backlog: over the next 7 days, 1 s tick.
    let dues: Vec<SystemTime> = (0..count)
        .map(|_| origin + Duration::from_millis(rng.random_range(0..7 * 86_400_000)))
        .collect();

    let baseline = ALLOCATED.load(Ordering::Relaxed);
    let mut wheel: TimerWheel<MessageId> = TimerWheel::new(origin, Duration::from_secs(1));
    let started = Instant::now();
    for (index, due) in dues.iter().enumerate() {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(index as u64).to_le_bytes());
        wheel.insert(*due, id);
    }
    let insert_time = started.elapsed();
    let heap = ALLOCATED.load(Ordering::Relaxed) - baseline;

    println!("entries:            {count}");
    println!(
        "inserts/s:          {:.0}",
        count as f64 / insert_time.as_secs_f64()
    );
    println!(
        "heap bytes/entry:   {:.1} (counting allocator)",
        heap as f64 / count as f64
    );
    println!(
        "wheel bytes/entry:  {:.1} (allocated_bytes)",
        wheel.allocated_bytes() as f64 / count as f64
    );

    // Pop everything by walking the clock forward a minute at a time, as
    // the scheduler would, reusing one output buffer.
    let mut out = Vec::with_capacity(64 * 1024);
    let mut popped = 0usize;
    let started = Instant::now();
    let mut now = origin;
    while !wheel.is_empty() {
        now += Duration::from_secs(60);
        wheel.pop_due_into(now, &mut out);
        popped += out.len();
        out.clear();
    }
    let pop_time = started.elapsed();
    assert_eq!(popped, count);
    println!(
        "pops/s:             {:.0}",
        count as f64 / pop_time.as_secs_f64()
    );

    // Steady state: a wheel holding `count` entries, with each popped
    // entry re-inserted for a later retry (the hot path under load).
    let mut wheel: TimerWheel<MessageId> = TimerWheel::new(origin, Duration::from_secs(1));
    for (index, due) in dues.iter().enumerate() {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(index as u64).to_le_bytes());
        wheel.insert(*due, id);
    }
    let started = Instant::now();
    let mut churned = 0usize;
    let mut now = origin;
    let mut steps = 0usize;
    while churned < count {
        steps += 1;
        now += Duration::from_secs(1);
        wheel.pop_due_into(now, &mut out);
        for id in out.drain(..) {
            let retry = now + Duration::from_secs(rng.random_range(1200..2400));
            wheel.insert(retry, id);
            churned += 1;
        }
    }
    let churn_time = started.elapsed();
    println!(
        "pop+reinsert/s:     {:.0} (steady state, {} waiting, {steps} one-second steps)",
        churned as f64 / churn_time.as_secs_f64(),
        wheel.len()
    );
}
