//! [`TaskLocals`]: the event loop and `contextvars.Context` a crossing carries (rules C1, C8).

use crate::ffi::thread_is_attached;
use crate::queue::LoopQueue;
use crate::registry::queue_for;
use crate::BridgeError;
use pyo3::prelude::*;
use std::sync::Arc;

/// The event loop and `contextvars.Context` that a crossing carries.
///
/// Cloning is an `Arc` increment: no Python reference count changes, so a clone may be made and
/// dropped on any thread. When the last clone is dropped on a thread that is not attached, the
/// Python references travel back to the loop thread and are released there.
///
/// # Contextvars
/// [`TaskLocals::new`] carries no context (`None`): coroutines started with it run in a copy of
/// whatever context is current on the loop thread. [`TaskLocals::copy_context`] captures the
/// caller's context, which is what [`crate::tokio::get_current_locals`] does (rule C8).
#[derive(Clone)]
pub struct TaskLocals(Arc<Inner>);

struct Inner {
    /// `(event_loop, context)`; `None` only while `Drop` runs.
    refs: Option<(Py<PyAny>, Py<PyAny>)>,
    /// The loop's delivery queue; `None` when the object could not be used as a loop (the
    /// error surfaces at the first crossing).
    queue: Option<Arc<LoopQueue>>,
}

impl TaskLocals {
    /// Locals for `event_loop`, with no context (see the type's docs).
    pub fn new(event_loop: Bound<'_, PyAny>) -> Self {
        let queue = queue_for(&event_loop).ok();
        let context = event_loop.py().None();
        Self(Arc::new(Inner {
            refs: Some((event_loop.unbind(), context)),
            queue,
        }))
    }

    /// Locals for the loop running in this thread.
    ///
    /// # Errors
    /// `RuntimeError` when no loop runs in this thread (rule C9).
    pub fn with_running_loop(py: Python<'_>) -> PyResult<Self> {
        Ok(Self::new(get_running_loop(py)?))
    }

    /// The same loop with `context` as the carried context.
    pub fn with_context(self, context: Bound<'_, PyAny>) -> Self {
        let py = context.py();
        let event_loop = self.event_loop(py).unbind();
        Self(Arc::new(Inner {
            refs: Some((event_loop, context.unbind())),
            queue: self.0.queue.clone(),
        }))
    }

    /// The same loop, carrying a copy of the caller's current context.
    pub fn copy_context(self, py: Python<'_>) -> PyResult<Self> {
        let ctx = crate::py::copy_context(py)?.call0()?;
        Ok(self.with_context(ctx))
    }

    /// The running loop with a copy of the current context, in one allocation: the locals a
    /// crossing made outside any other crossing carries (C8).
    pub(crate) fn running_with_copied_context(py: Python<'_>) -> PyResult<Self> {
        let event_loop = get_running_loop(py)?;
        let context = crate::py::copy_context(py)?.call0()?;
        let queue = Some(queue_for(&event_loop)?);
        Ok(Self(Arc::new(Inner {
            refs: Some((event_loop.unbind(), context.unbind())),
            queue,
        })))
    }

    /// The event loop.
    pub fn event_loop<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.refs().0.bind(py).clone()
    }

    /// The carried `contextvars.Context`, or `None`.
    pub fn context<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.refs().1.bind(py).clone()
    }

    fn refs(&self) -> &(Py<PyAny>, Py<PyAny>) {
        // `refs` is `Some` for the whole life of `Inner`; only its `Drop` takes it.
        self.0
            .refs
            .as_ref()
            .expect("TaskLocals used during its own drop")
    }

    /// The loop's delivery queue, or the reason this loop cannot carry crossings.
    pub(crate) fn queue(&self, py: Python<'_>) -> PyResult<&Arc<LoopQueue>> {
        self.0.queue.as_ref().ok_or_else(|| {
            BridgeError::NotALoop(crate::err::describe(self.event_loop(py).as_any())).into()
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(refs) = self.refs.take() else { return };
        match &self.queue {
            // Invariant 3 of `queue`: released here when attached, else on the loop thread.
            Some(q) => q.release(refs),
            None if thread_is_attached() => drop(refs),
            // No loop to send them to and no interpreter here: leak two references rather
            // than touch the interpreter from a thread that may not.
            None => std::mem::forget(refs),
        }
    }
}

impl std::fmt::Debug for TaskLocals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLocals").finish_non_exhaustive()
    }
}

/// The event loop running in this thread.
///
/// # Errors
/// `RuntimeError` with a hint at `asyncio.run(main())` when no loop runs here (rule C9).
pub fn get_running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let running = crate::py::running_loop_or_none(py)?;
    if running.is_none() {
        return Err(BridgeError::NoRunningLoop.into());
    }
    Ok(running)
}
