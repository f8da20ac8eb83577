//! Which delivery queue belongs to which event loop, and registering a new queue with its loop.
//!
//! # Deadlock safety
//! The registry lock is never held while Python code may run (registration calls into the
//! loop, which may release the GIL to another thread that then waits for this lock). Only weak
//! reference look-ups, which run no Python code, happen under it.

use crate::err::describe;
use crate::queue::{LoopQueue, WAKEUP_ENV};
use pyo3::intern;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, PoisonError};

static REGISTRY: Mutex<Vec<Arc<LoopQueue>>> = Mutex::new(Vec::new());

/// The queue of `event_loop`, created and registered with the loop on first use. Attached, any
/// thread; registration with the loop itself happens on the loop thread.
pub(crate) fn queue_for(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<LoopQueue>> {
    if let Some(q) = find(&lock(), event_loop) {
        return Ok(q);
    }
    let queue = register(event_loop)?;
    let py = event_loop.py();
    let mut reg = lock();
    // Another thread may have registered the same loop meanwhile; the first entry wins and this
    // queue is dropped (its reader then sees end-of-file and leaves the loop, see `Drainer`).
    if let Some(q) = find(&reg, event_loop) {
        return Ok(q);
    }
    // Forget loops that were collected. Their queues are closed and released after the lock
    // is dropped.
    let (live, dead): (Vec<_>, Vec<_>) = std::mem::take(&mut *reg)
        .into_iter()
        .partition(|q| q.event_loop(py).is_some());
    *reg = live;
    reg.push(Arc::clone(&queue));
    drop(reg);
    for q in dead {
        q.close(py); // L1: a collected loop is a closed one.
    }
    Ok(queue)
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Arc<LoopQueue>>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Weak reference look-ups only: runs no Python code (see "Deadlock safety").
fn find(reg: &[Arc<LoopQueue>], event_loop: &Bound<'_, PyAny>) -> Option<Arc<LoopQueue>> {
    let py = event_loop.py();
    reg.iter()
        .find(|q| q.event_loop(py).is_some_and(|l| l.is(event_loop)))
        .map(Arc::clone)
}

/// Every registered queue, for the `atexit` hook (L2). Attached. The lock is only tried, for
/// a bounded time: in a process forked while the watchdog held it, nobody will release it.
pub(crate) fn queues_at_exit() -> Vec<Arc<LoopQueue>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        match REGISTRY.try_lock() {
            Ok(reg) => return reg.clone(),
            Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner().clone(),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => return Vec::new(),
        }
    }
}

/// Calls `f` on every registered queue, under the registry lock. Any thread, attached or not:
/// `f` must not run Python code or wait for the interpreter (see "Deadlock safety").
pub(crate) fn for_each_queue(mut f: impl FnMut(&Arc<LoopQueue>)) {
    for q in lock().iter() {
        f(q);
    }
}

/// A new queue for `event_loop`: the socket wakeup where the loop has `add_reader` (and the
/// environment does not force the fallback), else the `call_soon_threadsafe` wakeup.
fn register(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<LoopQueue>> {
    let py = event_loop.py();
    if !event_loop.hasattr(intern!(py, "call_soon_threadsafe"))? {
        return Err(crate::BridgeError::NotALoop(describe(event_loop)).into());
    }
    let force_threadsafe = std::env::var(WAKEUP_ENV).is_ok_and(|v| v == "threadsafe");
    #[cfg(unix)]
    if !force_threadsafe {
        if let Some(q) = register_socket(event_loop)? {
            return Ok(q);
        }
    }
    #[cfg(not(unix))]
    let _ = force_threadsafe; // Only the fallback exists off Unix.
    LoopQueue::with_threadsafe_wakeup(event_loop)
}

/// Registers a socket reader with the loop; `None` where the loop has no `add_reader`
/// (a missing attribute, or Windows' proactor loop raising `NotImplementedError`).
#[cfg(unix)]
fn register_socket(event_loop: &Bound<'_, PyAny>) -> PyResult<Option<Arc<LoopQueue>>> {
    let py = event_loop.py();
    let add_reader = match event_loop.getattr(intern!(py, "add_reader")) {
        Ok(a) => a,
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (queue, drainer, fd) = LoopQueue::with_socket(event_loop)?;
    let running = crate::py::running_loop_or_none(py)?;
    // The reader's handle keeps the context current at registration, and every drain runs in
    // it: register from a fresh, empty context so no caller's values leak into later crossings
    // (C8).
    let fresh = crate::py::context_type(py)?.call0()?;
    let outcome = if running.is(event_loop) || !is_running(event_loop)? {
        // This thread owns the loop (or nobody runs it): register now.
        fresh.call_method1(intern!(py, "run"), (add_reader, fd, drainer))
    } else {
        // add_reader is not thread-safe: let the loop thread register. Bytes written before
        // then wait in the socket and fire the reader as soon as it is registered.
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item(intern!(py, "context"), fresh)?;
        event_loop.call_method(
            intern!(py, "call_soon_threadsafe"),
            (add_reader, fd, drainer),
            Some(&kwargs),
        )
    };
    match outcome {
        Ok(_) => Ok(Some(queue)),
        // `add_reader` is not implemented (Windows' proactor loop): fall back.
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyNotImplementedError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn is_running(event_loop: &Bound<'_, PyAny>) -> PyResult<bool> {
    event_loop
        .call_method0(intern!(event_loop.py(), "is_running"))?
        .is_truthy()
}

/// Crossings pending on every registered loop (L1). Any thread.
pub fn live_crossings() -> usize {
    let mut n = 0;
    for_each_queue(|q| n += q.live_len());
    n
}
