//! `!Send` futures on a tokio `LocalSet` (rule R6): [`local_future_into_py`],
//! [`local_future_into_py_with_locals`] and [`scope_local`].
//!
//! A local crossing is an ordinary crossing (`into_py::new_crossing`: the same state machine,
//! tokens, pending set and delivery) whose Rust side is a task of the current `LocalSet`
//! instead of the runtime's.
//!
//! # Invariants
//! 1. Nothing is created before the `LocalSet` is known to be there: outside one the call
//!    returns `RuntimeError` ([`BridgeError::NoLocalSet`]) with no crossing made and no panic
//!    seen by the user (tokio's `spawn_local` panics there; [`in_local_set`] catches that panic
//!    on a probe).
//! 2. The `!Send` future lives and is dropped on the `LocalSet`'s thread, inside the crossing's
//!    scope (C1, C3): [`drive`] runs in the local task.
//! 3. Only `Send` data leaves that thread: a value is converted to a `Py<PyAny>` there, attached
//!    (the one documented exception to A1's no-attach rule; `()` needs no attach), and the
//!    `Py` is delivered through the normal path (C7). Errors and panics already are `Send`.

use super::{get_current_locals, CancelScope, CANCEL, TASK_LOCALS};
use crate::cancel::CancelMode;
use crate::err::BridgeError;
use crate::into_py::{drive, new_crossing, send_converted};
use crate::TaskLocals;
use pyo3::prelude::*;
use std::cell::Cell;
use std::future::Future;
use std::sync::Once;

/// Runs the `!Send` future `fut` with `locals` as the current [`TaskLocals`] (C1), like
/// [`scope`](super::scope). The inner future is dropped inside the scope.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_bridge::{tokio, TaskLocals};
///
/// /// Sync Rust with a loop running in another thread: `!Send` work on a `LocalSet` that
/// /// crosses to that loop.
/// fn on_local_set(locals: TaskLocals) -> PyResult<()> {
///     ::tokio::task::LocalSet::new().block_on(
///         tokio::get_runtime(),
///         tokio::scope_local(locals, async {
///             let rc = std::rc::Rc::new(1);
///             let fut = Python::attach(|py| {
///                 let awaitable = tokio::local_future_into_py(py, async move { Ok(*rc) })?;
///                 tokio::into_future(awaitable)
///             })?;
///             fut.await.map(drop)
///         }),
///     )
/// }
/// ```
pub fn scope_local<F, R>(locals: TaskLocals, fut: F) -> impl Future<Output = R>
where
    F: Future<Output = R> + 'static,
{
    TASK_LOCALS.scope(locals, fut)
}

/// Converts a `!Send` Rust future into an `asyncio.Future`, using [`get_current_locals`]
/// (inside [`scope_local`], its locals). Call it inside a tokio `LocalSet` (R6).
///
/// The future runs as a task of the current `LocalSet`; its value is converted to Python on
/// the `LocalSet`'s thread, attached (the one exception to the bridge's rule that it attaches
/// only on the loop thread), and delivered to the loop like any crossing's (C2, C7).
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
/// use std::rc::Rc;
///
/// #[pyfunction]
/// fn local_sleep(py: Python<'_>, secs: f64) -> PyResult<Bound<'_, PyAny>> {
///     let secs = Rc::new(secs); // !Send: future_into_py would not accept it
///     pyo3_async_bridge::tokio::local_future_into_py(py, async move {
///         tokio::time::sleep(std::time::Duration::from_secs_f64(*secs)).await;
///         Ok(())
///     })
/// }
/// ```
///
/// # Cancellation
/// As [`future_into_py`](super::future_into_py) in [`CancelMode::Drop`]: cancelling the
/// returned future fires the crossing's token and drops the Rust future on the `LocalSet`'s
/// thread, inside its scope (C3), as soon as the `LocalSet` is driven. A `LocalSet` dropped
/// (or never driven again) with the task pending drops it: the future then fails with
/// `RuntimeError`, or never ends if the `LocalSet` is kept but not driven.
///
/// # Errors
/// `RuntimeError` outside a `LocalSet` (checked first, nothing is started), then as
/// [`get_current_locals`].
///
/// # Panics
/// Never by itself. Built with `panic = "abort"`, the `LocalSet` check cannot catch tokio's
/// panic, and a call outside a `LocalSet` aborts.
pub fn local_future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py> + 'static,
{
    local_crossing(py, None, "local_future_into_py", fut)
}

/// Like [`local_future_into_py`] with explicit `locals`.
///
/// # Errors
/// `RuntimeError` outside a `LocalSet`; `TypeError` when `locals` does not hold a usable event
/// loop.
pub fn local_future_into_py_with_locals<F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py> + 'static,
{
    local_crossing(py, Some(locals), "local_future_into_py_with_locals", fut)
}

/// The thread of the `LocalSet` (attached): the crossing, then its task on that `LocalSet`.
fn local_crossing<'py, F, T>(
    py: Python<'py>,
    locals: Option<TaskLocals>,
    caller: &'static str,
    fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'a> IntoPyObject<'a> + 'static,
{
    // L3: no new crossing once the interpreter exits; the frame is counted until it returns.
    let _entry = crate::exit::enter()?;
    // Invariant 1: before anything exists that would have to be undone.
    if !in_local_set() {
        return Err(BridgeError::NoLocalSet(caller).into());
    }
    let locals = match locals {
        Some(locals) => locals,
        None => get_current_locals(py)?,
    };
    let mode = CancelMode::Drop;
    let (py_fut, crossing) = new_crossing(py, &locals, mode)?;
    let cancel = CancelScope::of(&crossing.shared);
    let task = scope_local(
        locals,
        CANCEL.scope(cancel, drive(crossing.shared, mode, fut)),
    );
    let delivery = crossing.delivery;
    // The `LocalSet`'s thread runs the task (invariant 2). If the `LocalSet` drops it first,
    // `delivery`'s own drop sends `Abandoned` (C7).
    drop(::tokio::task::spawn_local(async move {
        send_converted(delivery, task.await);
    }));
    Ok(py_fut)
}

thread_local! {
    /// Set while this thread probes for a `LocalSet`: the panic hook stays silent.
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is inside a tokio `LocalSet` (polling it, or entered).
///
/// Tokio has no public question for this; `spawn_local` panics outside one. So a no-op task is
/// spawned under `catch_unwind`, with the process's panic hook wrapped once so that it keeps
/// quiet for this thread's probe and forwards every other panic to the hook it replaced.
fn in_local_set() -> bool {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PROBING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    PROBING.with(|p| p.set(true));
    let probe = std::panic::catch_unwind(|| drop(::tokio::task::spawn_local(async {})));
    PROBING.with(|p| p.set(false));
    probe.is_ok()
}
