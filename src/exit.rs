//! Interpreter exit (rules A1, L3).
//!
//! A thread that takes the GIL back while the interpreter finalizes hangs, or (3.9–3.13) is
//! killed with `pthread_exit`, whose forced unwind through Rust frames aborts the process or
//! runs destructors without the GIL. An asyncio loop running in a daemon thread is exactly such
//! a thread. So an `atexit` hook, which runs before finalization while daemon threads still run
//! normally, does three things:
//! 1. it refuses every *new* crossing from then on (`future_into_py*`, `into_future*` raise a
//!    `RuntimeError`), so a loop that keeps starting crossings fails fast in Python instead of
//!    running into finalization inside a bridge frame. Crossings already in flight still
//!    settle: an `atexit` handler may be waiting for one;
//! 2. it stops the Rust future of every crossing still pending on a loop that no longer runs
//!    (L2: the tokens fire; should the loop run again, the crossing's future ends cancelled
//!    with [`EXIT_CANCEL_MESSAGE`](crate::EXIT_CANCEL_MESSAGE)). A loop still running in
//!    another thread keeps settling its crossings;
//! 3. it waits, with the GIL released and for at most [`QUIESCE_LIMIT`], until no thread is
//!    inside a bridge frame entered from Python (a crossing being made, a drain) and no
//!    delivery is queued for a loop that still runs (for a settled 10 ms), and until the
//!    stopped Rust futures are dropped;
//! 4. it closes the gate of the bridge's own threads (the waker, the watchdog): they never
//!    attach again.
//!
//! What remains: a loop that is still settling crossings begun before the hook when
//! finalization starts (after every `atexit` handler), the user's own `#[pyfunction]` frames
//! that run Python code, and their own `Python::attach` on other threads.
//!
//! # Deadlock safety
//! Nothing is held while the hook waits: it counts frames and waker attaches through atomics,
//! detaches, and waits with a bound. A thread waiting for the GIL inside a frame gets it,
//! finishes and leaves.
//!
//! # No missed entry
//! An entry increments its counter and then reads the flag; the hook sets the flag and then
//! reads the counter, all `SeqCst`. So either the entry sees the flag (and leaves), or the hook
//! sees it counted (and waits for it).
//!
//! # Fork
//! A child process starts with every counter at zero and the flags as the parent had them
//! (`os.register_at_fork`): threads counted in the parent do not exist in the child.

use crate::attach::attach;
use crate::err::BridgeError;
use crate::live::LiveCrossing;
use crate::queue::LoopQueue;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set by the `atexit` hook: no new crossing, and the bridge's own threads no longer attach.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads inside a bridge frame entered from Python.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Attaches of the bridge's own (waker) thread in progress.
static WAKER_ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// How long the `atexit` hook waits for threads inside bridge frames.
pub const QUIESCE_LIMIT: Duration = Duration::from_secs(1);

/// A thread inside a bridge frame entered from Python; see [`enter`] and [`counted`].
#[must_use = "the entry lasts as long as this guard"]
pub(crate) struct Entry(&'static AtomicUsize);

impl Drop for Entry {
    fn drop(&mut self) {
        // Saturating: a fork child reset the counter under a frame of the forking thread.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Counts this thread in `counter` until the guard drops.
fn count_in(counter: &'static AtomicUsize) -> Entry {
    counter.fetch_add(1, Ordering::SeqCst);
    Entry(counter)
}

/// Counts this thread in `counter` unless the interpreter exits (see "No missed entry").
fn try_enter(counter: &'static AtomicUsize) -> Option<Entry> {
    let entry = count_in(counter);
    // When exiting, `entry` is dropped here: uncounted again.
    (!EXITING.load(Ordering::SeqCst)).then_some(entry)
}

/// Attached thread, at the top of a frame that starts a new crossing: `Err` once the
/// interpreter is exiting (L3). Cheap: two uncontended atomics.
pub(crate) fn enter() -> Result<Entry, BridgeError> {
    try_enter(&ACTIVE).ok_or(BridgeError::Exiting)
}

/// Attached thread, at the top of a frame that serves crossings already in flight (a drain):
/// counted for the hook's wait, never refused.
pub(crate) fn counted() -> Entry {
    count_in(&ACTIVE)
}

/// Bridge thread (never a runtime thread): runs `f` attached, unless the interpreter exits.
pub(crate) fn attach_unless_exiting<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    let _entry = try_enter(&WAKER_ACTIVE)?;
    Some(attach(f))
}

/// Waits, at most until `deadline`, for `counter` to reach zero. Detached.
fn wait_for_zero(counter: &AtomicUsize, deadline: Instant) {
    // Nothing signals the last exit from a frame; a short poll, once per process.
    while counter.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The `atexit` hook (see the module docs). Exiting thread, attached.
#[pyfunction]
fn quiesce_bridge(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    let (stopped, serving) = stop_crossings(py);
    py.detach(|| {
        let deadline = Instant::now() + QUIESCE_LIMIT;
        // A loop still running in another thread (a daemon thread, typically) drains the
        // outcomes that are arriving for it: wait until no bridge frame is active and no
        // delivery is queued for such a loop, for a settled 10 ms, so that it is done entering
        // bridge frames before finalization starts. (New crossings are refused from now on;
        // crossings that stay pending, such as a long poll, do not hold the exit up.)
        let mut quiet_since: Option<Instant> = None;
        while Instant::now() < deadline {
            let quiet = ACTIVE.load(Ordering::SeqCst) == 0 && !serving.iter().any(|q| q.is_armed());
            match (quiet, quiet_since) {
                (false, _) => quiet_since = None,
                (true, None) => quiet_since = Some(Instant::now()),
                (true, Some(t)) if t.elapsed() >= Duration::from_millis(10) => break,
                (true, Some(_)) => {}
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Its own bound: a bridge thread counted in may be waiting for the GIL that this
        // thread just released, and must be let through before finalization, however long the
        // wait above took.
        wait_for_zero(&WAKER_ACTIVE, Instant::now() + QUIESCE_LIMIT);
        // L2: the Rust futures just stopped are dropped on their runtime threads, with the GIL
        // free for any destructor that needs it.
        while stopped.iter().any(|c| c.producer_running()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    drop((stopped, serving)); // Attached again.
}

/// Whether the `atexit` hook has run: the bridge's own threads stop.
pub(crate) fn is_exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

/// L2: stops the Rust future of every crossing still pending on a loop that no longer runs
/// (nothing could deliver its outcome); returns those whose future was still running, and the
/// queues of the loops that still run. Crossings on a loop that still runs (in another thread)
/// are left to settle: an `atexit` handler that runs after this one may be waiting for them
/// (L3). Attached.
fn stop_crossings(py: Python<'_>) -> (Vec<Arc<dyn LiveCrossing>>, Vec<Arc<LoopQueue>>) {
    let mut stopped = Vec::new();
    let mut serving = Vec::new();
    for queue in crate::registry::queues_at_exit() {
        let running = queue.event_loop(py).is_some_and(|l| {
            l.call_method0(pyo3::intern!(py, "is_running"))
                .and_then(|r| r.is_truthy())
                .unwrap_or(false)
        });
        if running {
            serving.push(queue);
            continue;
        }
        for crossing in queue.live_crossings() {
            if crossing.exiting() {
                stopped.push(crossing);
            }
        }
    }
    (stopped, serving)
}

/// `os.register_at_fork(after_in_child=...)`: the threads the counters counted are gone.
#[pyfunction]
fn reset_after_fork() {
    ACTIVE.store(0, Ordering::SeqCst);
    WAKER_ACTIVE.store(0, Ordering::SeqCst);
}

/// Registers the `atexit` hook (and the fork reset) once per process. Attached.
pub(crate) fn register_atexit_hook(py: Python<'_>) -> PyResult<()> {
    static REGISTERED: PyOnceLock<()> = PyOnceLock::new();
    REGISTERED
        .get_or_try_init(py, || {
            let hook = wrap_pyfunction!(quiesce_bridge, py)?;
            py.import("atexit")?.call_method1("register", (hook,))?;
            let os = py.import("os")?;
            if os.hasattr("register_at_fork")? {
                let kwargs = pyo3::types::PyDict::new(py);
                kwargs.set_item("after_in_child", wrap_pyfunction!(reset_after_fork, py)?)?;
                os.call_method("register_at_fork", (), Some(&kwargs))?;
            }
            Ok::<_, PyErr>(())
        })
        .map(|_| ())
}
