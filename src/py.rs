//! Cached Python lookups (`PyOnceLock` + `intern!`): nothing on the hot path imports a module
//! or resolves a module attribute twice.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

macro_rules! cached_attr {
    ($(#[$doc:meta])* $name:ident, $module:literal, $attr:literal) => {
        $(#[$doc])*
        pub(crate) fn $name(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
            static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            CELL.import(py, $module, $attr)
        }
    };
}

cached_attr!(
    /// `asyncio._get_running_loop`: the running loop or `None`, never raises.
    get_running_loop_fn, "asyncio", "_get_running_loop"
);

/// The loop running in this thread, or `None`.
pub(crate) fn running_loop_or_none(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    get_running_loop_fn(py)?.call0()
}
cached_attr!(
    /// `asyncio.ensure_future`.
    ensure_future, "asyncio", "ensure_future"
);
cached_attr!(
    /// `contextvars.copy_context`.
    copy_context, "contextvars", "copy_context"
);
cached_attr!(
    /// `contextvars.Context`: a fresh, empty context.
    context_type, "contextvars", "Context"
);
cached_attr!(
    /// `inspect.isawaitable`.
    isawaitable, "inspect", "isawaitable"
);

/// `types.CoroutineType`, for the fast path of starting a coroutine.
pub(crate) fn coroutine_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    CELL.import(py, "types", "CoroutineType")
}
cached_attr!(
    /// `asyncio.CancelledError` (C5).
    cancelled_error, "asyncio", "CancelledError"
);
