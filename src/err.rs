//! Errors: one Rust enum inside, Python exceptions at the edge.

use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError};
use pyo3::{create_exception, PyErr};

create_exception!(
    pyo3_async_bridge,
    RustPanic,
    PyException,
    "A Rust future panicked. The exception message carries the panic message (rule C2)."
);

/// What can go wrong inside the bridge. Converts into a Python exception with [`From`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// No asyncio loop runs in this thread and no task-local one was set (rule C9).
    #[error(
        "no running event loop: call this from a coroutine running on an asyncio event loop, \
         e.g. inside `async def main(): ...` started with `asyncio.run(main())`, or pass \
         TaskLocals explicitly (future_into_py_with_locals)"
    )]
    NoRunningLoop,
    /// The object handed to `into_future` cannot be awaited (rule C9).
    #[error("{0} is not awaitable: into_future expects a coroutine, Task, Future or an object with __await__")]
    NotAwaitable(String),
    /// The object given as event loop cannot serve as one.
    #[error("{0} is not a usable asyncio event loop")]
    NotALoop(String),
    /// The Rust future panicked; the payload's message when it had one (rule C2).
    #[error("{0}")]
    Panic(String),
    /// The Rust future was dropped by its runtime before it produced an outcome.
    #[error("the Rust future was dropped before it completed (was its runtime shut down?)")]
    Abandoned,
    /// The Python awaitable went away without completing (its loop closed or it was collected).
    #[error("the Python awaitable was dropped before it completed (was its event loop closed?)")]
    AwaitableDropped,
    /// The crossing's event loop closed before the crossing completed, or was already closed
    /// when it started (rule L1).
    #[error(
        "the asyncio event loop was closed: it runs no task and delivers no result any more \
         (close a loop only after the work that crosses to it has finished)"
    )]
    LoopClosed,
    /// The interpreter is exiting: the bridge's `atexit` hook has run (rule L3).
    #[error(
        "the Python interpreter is exiting: pyo3-async-bridge starts no new crossing once its \
         atexit hook has run (finish async work before interpreter shutdown, e.g. before \
         asyncio.run returns)"
    )]
    Exiting,
    /// `tokio::run` or `tokio::run_until_complete` was called while a loop runs in this thread
    /// (rule R2).
    #[error(
        "{0} cannot be called while an asyncio event loop is running in this thread: inside a \
         coroutine, await the work instead (tokio::future_into_py / tokio::into_future)"
    )]
    LoopRunning(&'static str),
    /// The event loop given to `run_until_complete` or `block_on_python` is closed.
    #[error("the event loop {0} is closed")]
    ClosedLoopGiven(String),
    /// `tokio::block_on_python` was called on the thread of the loop it would wait for (R5).
    #[error(
        "block_on_python would deadlock: the event loop it waits for runs in this thread; \
         await the awaitable instead (tokio::into_future)"
    )]
    WouldDeadlock,
    /// A `!Send` crossing (`tokio::local_future_into_py*`) was made outside a tokio `LocalSet`
    /// (rule R6).
    #[error(
        "{0} must be called inside a tokio LocalSet (LocalSet::run_until, LocalSet::block_on, or \
         a task spawned with tokio::task::spawn_local), for example with \
         LocalSet::new().block_on(runtime, tokio::scope_local(locals, fut)); a Send future can \
         use future_into_py instead"
    )]
    NoLocalSet(&'static str),
    /// A `!Send` crossing (`async_std::local_future_into_py*`) was made outside any async-std
    /// task, where its local task would never run (rule R8).
    #[error(
        "{0} must be called inside an async-std task (async_std::task::block_on on this thread, \
         or a task it runs): its future runs on this thread only while async-std drives it here; \
         a Send future can use async_std::future_into_py instead"
    )]
    NoAsyncStdTask(&'static str),
}

impl From<BridgeError> for PyErr {
    fn from(e: BridgeError) -> PyErr {
        match e {
            BridgeError::NotAwaitable(_) | BridgeError::NotALoop(_) => {
                PyTypeError::new_err(e.to_string())
            }
            BridgeError::Panic(msg) => RustPanic::new_err(msg),
            BridgeError::NoRunningLoop
            | BridgeError::Abandoned
            | BridgeError::AwaitableDropped
            | BridgeError::LoopClosed
            | BridgeError::Exiting
            | BridgeError::LoopRunning(_)
            | BridgeError::ClosedLoopGiven(_)
            | BridgeError::WouldDeadlock
            | BridgeError::NoLocalSet(_)
            | BridgeError::NoAsyncStdTask(_) => PyRuntimeError::new_err(e.to_string()),
        }
    }
}

/// The message of a panic payload: `&str` and `String` payloads keep their text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Rust future panicked with a non-string payload".to_owned()
    }
}

/// `repr(obj)` for error messages, with a fallback when `repr` itself fails.
pub(crate) fn describe(obj: &pyo3::Bound<'_, pyo3::PyAny>) -> String {
    use pyo3::types::PyAnyMethods;
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| format!("<{} object>", obj.get_type()))
}
