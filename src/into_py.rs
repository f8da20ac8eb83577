//! Python awaits Rust: a crossing from a Rust future to an `asyncio.Future` (rules C1, C2, C7).
//!
//! The loop thread creates the future and spawns one runtime task. The task holds no Python
//! reference that it could drop itself: the target future is reached through a weak reference
//! inside a [`Delivery`], which always travels back to the loop thread, with the outcome or,
//! if the task is dropped first, with [`Outcome::Abandoned`].
//!
//! The Python future holds the crossing's [`CrossingGuard`] as a done callback. Because the Rust
//! side only holds the future weakly, a future nobody references any more is collected, its
//! guard is dropped, and the crossing's token fires: no orphaned Rust work.

use crate::err::{panic_message, BridgeError};
use crate::locals::TaskLocals;
use crate::queue::LoopQueue;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyWeakrefMethods, PyWeakrefReference};
use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How a crossing's Rust side ended.
pub(crate) enum Outcome<T> {
    /// `Ok(value)`: converted on the loop thread.
    Value(T),
    /// `Err(e)`: raised as the same exception object (C2).
    Error(PyErr),
    /// The future panicked; the message (C2).
    Panic(String),
    /// The token fired and the future was dropped: the Python side is already done.
    Cancelled,
    /// The runtime dropped the task before it produced an outcome.
    Abandoned,
}

/// The Python half of a new crossing, created on the loop thread.
pub(crate) struct Crossing {
    /// Fires when Python cancels the future or drops it unfinished.
    pub(crate) token: CancellationToken,
    /// Carries the outcome home.
    pub(crate) delivery: Delivery,
}

/// Creates the `asyncio.Future` for a crossing on `locals`' loop. Loop thread (or any attached
/// thread when the loop does not run yet); the returned future is the awaitable Python gets.
pub(crate) fn new_crossing<'py>(
    py: Python<'py>,
    locals: &TaskLocals,
) -> PyResult<(Bound<'py, PyAny>, Crossing)> {
    let queue = Arc::clone(locals.queue(py)?);
    let py_fut = locals
        .event_loop(py)
        .call_method0(intern!(py, "create_future"))?;
    let token = CancellationToken::new();
    let guard = CrossingGuard {
        token: token.clone(),
    };
    py_fut.call_method1(intern!(py, "add_done_callback"), (guard,))?;
    let target = PyWeakrefReference::new(&py_fut)?.unbind();
    let delivery = Delivery {
        queue,
        target: Some((target, locals.clone())),
    };
    Ok((py_fut, Crossing { token, delivery }))
}

/// Sends a crossing's outcome to the loop thread. Owned by the runtime task.
pub(crate) struct Delivery {
    queue: Arc<LoopQueue>,
    /// The weakly held target future and the crossing's locals (released on the loop thread).
    /// `Some` until the outcome is sent: by [`Delivery::send`] or, failing that, by `Drop`.
    target: Option<(Py<PyWeakrefReference>, TaskLocals)>,
}

impl Delivery {
    /// Runtime thread: hands the outcome to the loop queue. No interpreter needed; the wakeup
    /// rules are `queue`'s.
    pub(crate) fn send<T>(mut self, outcome: Outcome<T>)
    where
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        if let Some(target) = self.target.take() {
            self.queue
                .push(Box::new(move |py| settle(py, target, outcome)));
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // Exactly once (C7): a delivery that never sent its outcome sends `Abandoned`, so the
        // Python side never waits forever, and the references get home.
        if let Some(target) = self.target.take() {
            self.queue.push(Box::new(move |py| {
                settle::<()>(py, target, Outcome::Abandoned)
            }));
        }
    }
}

/// Loop thread: sets the outcome on the future, unless it is gone or already done (C7).
fn settle<T>(py: Python<'_>, target: (Py<PyWeakrefReference>, TaskLocals), outcome: Outcome<T>)
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let (weak, _locals) = target;
    if matches!(outcome, Outcome::Cancelled) {
        return; // The token fired: Python cancelled the future or dropped it.
    }
    let Some(fut) = weak.bind(py).upgrade() else {
        return; // Collected unawaited: its guard already fired the token.
    };
    match is_done(&fut) {
        Ok(false) => {}
        // Done already (cancelled by Python): C7, never set a result twice.
        Ok(true) => return,
        Err(e) => return e.write_unraisable(py, Some(&fut)),
    }
    let result = match outcome {
        Outcome::Value(v) => convert(py, v),
        Outcome::Error(e) => Err(e),
        Outcome::Panic(msg) => Err(BridgeError::Panic(msg).into()),
        Outcome::Abandoned => Err(BridgeError::Abandoned.into()),
        Outcome::Cancelled => return,
    };
    if let Err(e) = set_outcome(&fut, result) {
        // asyncio refused it (e.g. `set_exception(StopIteration())` is a TypeError before 3.12).
        // The future must still end (C7): fail it with a RuntimeError caused by the refusal.
        let fallback = pyo3::exceptions::PyRuntimeError::new_err(
            "the Rust future's outcome could not be set on its asyncio future",
        );
        fallback.set_cause(py, Some(e));
        if !is_done(&fut).unwrap_or(true) {
            if let Err(e) = set_outcome(&fut, Err(fallback)) {
                e.write_unraisable(py, Some(&fut));
            }
        }
    }
}

fn is_done(fut: &Bound<'_, PyAny>) -> PyResult<bool> {
    fut.call_method0(intern!(fut.py(), "done"))?.is_truthy()
}

fn set_outcome(fut: &Bound<'_, PyAny>, result: PyResult<Py<PyAny>>) -> PyResult<()> {
    let py = fut.py();
    match result {
        Ok(v) => fut.call_method1(intern!(py, "set_result"), (v,)),
        Err(e) => fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),)),
    }
    .map(drop)
}

/// Converts a result on the loop thread. `()` becomes `None` (PyO3 would give `()`), and a
/// failing or panicking conversion fails only this future (C2).
fn convert<T>(py: Python<'_>, value: T) -> PyResult<Py<PyAny>>
where
    T: for<'py> IntoPyObject<'py> + 'static,
{
    if TypeId::of::<T>() == TypeId::of::<()>() {
        return Ok(py.None());
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        use pyo3::IntoPyObjectExt;
        value.into_py_any(py)
    }))
    .unwrap_or_else(|payload| {
        Err(BridgeError::Panic(format!(
            "converting the result to Python panicked: {}",
            panic_message(&*payload)
        ))
        .into())
    })
}

/// Done callback of a crossing's future: fires the token once the future is done, whatever
/// ended it, or when the future is dropped before it was ever done (collected unawaited). After
/// a delivered result the Rust future has already finished, so firing it then costs nothing;
/// no Python call is needed to tell the cases apart.
#[pyclass(frozen, module = "pyo3_async_bridge")]
struct CrossingGuard {
    token: CancellationToken,
}

#[pymethods]
impl CrossingGuard {
    /// Loop thread, scheduled by the future when it is done.
    fn __call__(&self, _fut: &Bound<'_, PyAny>) {
        self.token.cancel();
    }
}

impl Drop for CrossingGuard {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Runs `fut` to its [`Outcome`]: panics caught, dropped promptly when `token` fires.
pub(crate) async fn drive<F, T>(token: CancellationToken, fut: F) -> Outcome<T>
where
    F: Future<Output = PyResult<T>>,
{
    use futures::FutureExt;
    let guarded = std::panic::AssertUnwindSafe(fut).catch_unwind();
    tokio::select! {
        biased;
        _ = token.cancelled() => Outcome::Cancelled,
        r = guarded => match r {
            Ok(Ok(v)) => Outcome::Value(v),
            Ok(Err(e)) => Outcome::Error(e),
            Err(payload) => Outcome::Panic(panic_message(&*payload)),
        },
    }
}
