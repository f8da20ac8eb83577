//! Interpreter exit (rules A1, L3).
//!
//! A thread that takes the GIL back while the interpreter finalizes hangs, or (3.9–3.13) is
//! killed with `pthread_exit`, whose forced unwind through Rust frames aborts the process or
//! runs destructors without the GIL. An asyncio loop running in a daemon thread is exactly such
//! a thread. So an `atexit` hook, which runs before finalization while daemon threads still run
//! normally, does three things:
//! 1. it marks the bridge as exiting: from then on every entry from Python (a crossing, a drain
//!    of the delivery queue, a task's completion) returns at once, raising a `RuntimeError`
//!    where it has a caller, so no thread enters a bridge frame again;
//! 2. it waits, with the GIL released and for at most [`QUIESCE_LIMIT`], until no thread is
//!    inside a bridge frame, so that finalization never catches one there;
//! 3. it closes the gate of the bridge's own threads: they never attach again.
//!
//! What remains the user's: their own `#[pyfunction]` frames and their own `Python::attach` on
//! other threads during finalization.
//!
//! # Deadlock safety
//! A bridge thread holds the gate across its whole attach, and a bridge frame holds an
//! [`Entry`] while it runs. The hook runs on the exiting thread with the GIL held, so it
//! detaches before it waits for either: a thread waiting for the GIL inside a frame or the
//! gate gets it, finishes, and opens the way. The wait for frames is bounded in any case.
//!
//! # No missed entry
//! An entry increments `ACTIVE` and then reads `EXITING`; the hook sets `EXITING` and then reads
//! `ACTIVE`, all `SeqCst`. So either the entry sees `EXITING` (and leaves), or the hook sees it
//! counted (and waits for it).

use crate::attach::attach;
use crate::err::BridgeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `true` while the bridge's threads may attach.
static GATE: Mutex<bool> = Mutex::new(true);
/// Set by the `atexit` hook: no new entry from Python.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads inside a bridge frame entered from Python.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// How long the `atexit` hook waits for threads inside bridge frames.
pub const QUIESCE_LIMIT: Duration = Duration::from_secs(1);

/// A thread inside a bridge frame entered from Python; see [`enter`].
#[must_use = "the entry lasts as long as this guard"]
pub(crate) struct Entry(());

impl Drop for Entry {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Attached thread, at the top of a bridge frame entered from Python: `Err` once the
/// interpreter is exiting (L3). Cheap: two uncontended atomics.
pub(crate) fn enter() -> Result<Entry, BridgeError> {
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        return Err(BridgeError::Exiting);
    }
    Ok(Entry(()))
}

/// Bridge thread (never a runtime thread): runs `f` attached, unless the interpreter exits.
pub(crate) fn attach_unless_exiting<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    let open = GATE.lock().unwrap_or_else(PoisonError::into_inner);
    if *open {
        Some(attach(f))
    } else {
        None
    }
}

/// The `atexit` hook (see the module docs). Exiting thread, attached.
#[pyfunction]
fn quiesce_bridge(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + QUIESCE_LIMIT;
        // Nothing signals the last exit from a frame; a short poll, once per process.
        while ACTIVE.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        *GATE.lock().unwrap_or_else(PoisonError::into_inner) = false;
    });
}

/// Registers the `atexit` hook once per process. Attached.
pub(crate) fn register_atexit_hook(py: Python<'_>) -> PyResult<()> {
    static REGISTERED: PyOnceLock<()> = PyOnceLock::new();
    REGISTERED
        .get_or_try_init(py, || {
            let hook = wrap_pyfunction!(quiesce_bridge, py)?;
            py.import("atexit")?.call_method1("register", (hook,))?;
            Ok::<_, PyErr>(())
        })
        .map(|_| ())
}
