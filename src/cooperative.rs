//! The future of a cooperative crossing (rule C3, [`CancelMode::Cooperative`]).
//!
//! `asyncio.Future.cancel()` ends the future at once, so a Python awaiter could never wait for
//! the Rust side to clean up. This mode hands Python an `asyncio.Future` subclass whose
//! `cancel(msg)` fires the crossing's token and returns `True` without ending the future; the
//! future ends cancelled once the Rust future has finished (or the grace timer dropped it).
//! A task awaiting it, or `asyncio.timeout` around it, sees `CancelledError` (or `TimeoutError`)
//! only then: `Task.cancel` calls the waiter's `cancel` and, when it returns `True`, waits.
//!
//! [`CancelMode::Cooperative`]: crate::CancelMode::Cooperative

use crate::cancel::Shared;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::sync::Arc;

const SOURCE: &std::ffi::CStr = cr#"
import asyncio


class CooperativeFuture(asyncio.Future):
    """An asyncio.Future whose cancel() asks the Rust future to stop and waits for it.

    Made by pyo3-async-bridge for crossings in cooperative cancellation mode (rule C3).
    """

    __slots__ = ("_bridge_hook",)

    def __init__(self, loop, hook):
        super().__init__(loop=loop)
        self._bridge_hook = hook

    def cancel(self, msg=None):
        if self.done():
            return False
        return self._bridge_hook(msg)

    def _bridge_end_cancelled(self, msg):
        return super().cancel(msg)
"#;

fn class(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        let module = PyModule::from_code(
            py,
            SOURCE,
            c"pyo3_async_bridge/cooperative.py",
            c"pyo3_async_bridge._cooperative",
        )?;
        Ok(module.getattr("CooperativeFuture")?.unbind())
    })
    .map(|c| c.bind(py))
}

/// Loop thread: a pending cooperative future on `event_loop` for the crossing `shared`.
pub(crate) fn new_future<'py>(
    event_loop: &Bound<'py, PyAny>,
    shared: Arc<Shared>,
) -> PyResult<Bound<'py, PyAny>> {
    class(event_loop.py())?.call1((event_loop, CancelHook { shared }))
}

/// Loop thread: ends a cooperative future cancelled, bypassing its deferring `cancel()`.
pub(crate) fn end_cancelled(fut: &Bound<'_, PyAny>, msg: Option<String>) -> PyResult<()> {
    fut.call_method1(pyo3::intern!(fut.py(), "_bridge_end_cancelled"), (msg,))
        .map(drop)
}

/// `CooperativeFuture._bridge_hook`: Python's `cancel(msg)` lands here. Held only by the
/// future, which the crossing keeps alive until its outcome arrives.
#[pyclass(frozen, module = "pyo3_async_bridge")]
struct CancelHook {
    shared: Arc<Shared>,
}

#[pymethods]
impl CancelHook {
    /// Loop thread. Returns what `Future.cancel` returns: `True` while the cancellation is
    /// pending (the token has fired; the future ends when the Rust future does).
    #[pyo3(signature = (msg=None))]
    fn __call__(&self, msg: Option<&Bound<'_, PyAny>>) -> bool {
        let reason = msg
            .filter(|m| !m.is_none())
            .and_then(|m| m.str().ok())
            .map(|s| s.to_string_lossy().into_owned());
        let (_, live) = self.shared.cancel(reason);
        live
    }
}
