//! The one wrapper through which the bridge attaches to the interpreter, counting attaches by
//! the kind of thread that made them.
//!
//! Architecture rule: tokio runtime threads never attach inside the bridge's machinery. The
//! counters let a test prove it under load (`tests/attach.rs`).

use pyo3::Python;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
    static WATCHDOG_THREAD: Cell<bool> = const { Cell::new(false) };
}

static FROM_RUNTIME: AtomicU64 = AtomicU64::new(0);
static FROM_OTHER: AtomicU64 = AtomicU64::new(0);
static FROM_WATCHDOG: AtomicU64 = AtomicU64::new(0);

/// Marks the calling thread as the L1 watchdog (its attaches are counted apart).
pub(crate) fn mark_watchdog_thread() {
    WATCHDOG_THREAD.with(|c| c.set(true));
}

/// Marks the calling thread as a runtime thread (installed as `on_thread_start`; a test
/// executor's threads call it through `debug`): the bridge's attaches there are counted apart.
pub fn mark_runtime_thread() {
    RUNTIME_THREAD.with(|c| c.set(true));
}

/// Whether the calling thread belongs to a runtime: ours (marked at start), a user's tokio
/// runtime whose threads keep tokio's default names, or async-std's executor threads.
pub(crate) fn is_runtime_thread() -> bool {
    RUNTIME_THREAD.with(Cell::get)
        || std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tokio-runtime-worker") || n == "async-std/runtime")
}

/// Attaches to the interpreter and runs `f`, counting the attach.
pub(crate) fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    if is_runtime_thread() {
        FROM_RUNTIME.fetch_add(1, Ordering::Relaxed);
    } else if WATCHDOG_THREAD.with(Cell::get) {
        FROM_WATCHDOG.fetch_add(1, Ordering::Relaxed);
    } else {
        FROM_OTHER.fetch_add(1, Ordering::Relaxed);
    }
    Python::attach(f)
}

/// How often the bridge itself attached, by kind of thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachCounts {
    /// Attaches made on tokio runtime threads (must stay 0).
    pub runtime_threads: u64,
    /// Attaches made on the bridge's own helper threads, the watchdog excepted.
    pub other_threads: u64,
    /// Attaches made by the L1 watchdog (only ever to look at a silent loop).
    pub watchdog: u64,
}

/// Snapshot of the attach counters.
pub fn attach_counts() -> AttachCounts {
    AttachCounts {
        runtime_threads: FROM_RUNTIME.load(Ordering::Relaxed),
        other_threads: FROM_OTHER.load(Ordering::Relaxed),
        watchdog: FROM_WATCHDOG.load(Ordering::Relaxed),
    }
}
