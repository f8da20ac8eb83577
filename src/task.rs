//! Starting a Python awaitable as an asyncio task on its loop (rules C4, C8, C9): the
//! awaitable check, `ctx.run(loop.create_task, coro)`, and what happens to an awaitable that
//! must never start.

use crate::cancel::DROP_CANCEL_MESSAGE;
use crate::err::{describe, BridgeError};
use crate::locals::TaskLocals;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;

/// For objects that are not coroutines: futures, tasks, `__await__` and generator-based
/// coroutines pass.
pub(crate) fn check_awaitable(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = obj.py();
    if obj.hasattr(intern!(py, "__await__"))?
        || crate::py::isawaitable(py)?.call1((obj,))?.is_truthy()?
    {
        Ok(())
    } else {
        Err(BridgeError::NotAwaitable(describe(obj)).into())
    }
}

pub(crate) fn is_coroutine(obj: &Bound<'_, PyAny>) -> bool {
    crate::py::coroutine_type(obj.py()).is_ok_and(|t| obj.get_type().is(t))
}

/// Loop thread: an awaitable whose `PyFuture` was dropped before it started. A coroutine is
/// closed (no "coroutine was never awaited"); a future or task is cancelled, as it would have
/// been had it started (C4).
pub(crate) fn discard(awaitable: &Bound<'_, PyAny>, is_coro: bool) {
    if is_coro {
        return close_unstarted(awaitable, true);
    }
    let py = awaitable.py();
    if awaitable.hasattr(intern!(py, "cancel")).unwrap_or(false) {
        if let Err(e) = awaitable.call_method1(intern!(py, "cancel"), (DROP_CANCEL_MESSAGE,)) {
            e.write_unraisable(py, Some(awaitable));
        }
    }
}

/// `ctx.run(loop.create_task, coro)`: the task copies `ctx` at creation (C8).
pub(crate) fn create_task<'py>(
    locals: &TaskLocals,
    awaitable: Bound<'py, PyAny>,
    is_coro: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = awaitable.py();
    let event_loop = locals.event_loop(py);
    let ctx = locals.context(py);
    // `start` runs on the loop thread while the loop runs, so `ensure_future` (for futures
    // and other awaitables) picks this very loop.
    let starter = if is_coro {
        event_loop.getattr(intern!(py, "create_task"))?
    } else {
        crate::py::ensure_future(py)?.clone()
    };
    let run = |ctx: &Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
        if ctx.is_none() {
            starter.call1((&awaitable,))
        } else {
            ctx.call_method1(intern!(py, "run"), (&starter, &awaitable))
        }
    };
    match run(&ctx) {
        // `ctx` is entered right now (a synchronous call inside the same crossing): run in a
        // copy instead, which is what the task would see anyway. Any other error stands.
        Err(e) if !ctx.is_none() && is_context_entered_error(py, &e) => {
            let copy = ctx.call_method0(intern!(py, "copy"))?;
            run(&copy)
        }
        other => other,
    }
}

/// `Context.run` on a context that is already entered raises this `RuntimeError`.
fn is_context_entered_error(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyRuntimeError>(py)
        && e.value(py)
            .str()
            .is_ok_and(|m| m.to_string_lossy().contains("already entered"))
}

/// A coroutine that will never become a task is closed (it never ran, so closing runs none of
/// its code), never left un-awaited (C4, C9).
pub(crate) fn close_unstarted(awaitable: &Bound<'_, PyAny>, is_coro: bool) {
    if is_coro {
        let _ = awaitable.call_method0(intern!(awaitable.py(), "close"));
    }
}

/// A coroutine waiting in a queued start job. If the job is dropped without running (its loop
/// closed first, L1), the coroutine is closed rather than left un-awaited. Jobs are dropped
/// only attached (invariant 3 of `queue`).
pub(crate) struct Unstarted {
    awaitable: Option<Py<PyAny>>,
    is_coro: bool,
}

impl Unstarted {
    pub(crate) fn new(awaitable: Bound<'_, PyAny>, is_coro: bool) -> Self {
        Unstarted {
            awaitable: Some(awaitable.unbind()),
            is_coro,
        }
    }

    /// Loop thread: the awaitable, to start now.
    pub(crate) fn take<'py>(mut self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.awaitable.take().map(|a| a.into_bound(py))
    }
}

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(awaitable) = self.awaitable.take() {
            let is_coro = self.is_coro;
            crate::ffi::if_attached(|py| close_unstarted(awaitable.bind(py), is_coro));
        }
    }
}
