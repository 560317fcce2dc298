//! Test-only fault hooks, compiled only with the `fault-injection` feature: the fault suite
//! uses them to crash the worker between COMMIT and the ack, and to make a handler panic.

use std::sync::atomic::{AtomicU64, Ordering};

/// Set to N: the worker aborts right after its Nth commit, before acking anything.
pub const CRASH_AFTER_COMMIT: &str = "AUTOMATION_FAULT_CRASH_AFTER_COMMIT";
/// An `audit.recorded` event with this action makes its handler panic.
pub const PANIC_ACTION: &str = "fault.panic";

pub fn after_commit() {
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    let Some(limit) = std::env::var(CRASH_AFTER_COMMIT).ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    if COMMITS.fetch_add(1, Ordering::SeqCst) + 1 == limit {
        eprintln!("fault injection: aborting after commit {limit}, before the ack");
        std::process::abort();
    }
}
