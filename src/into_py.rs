//! Python awaits Rust: a crossing from a Rust future to an `asyncio.Future` (rules C1–C7).
//!
//! The loop thread creates the future and spawns one runtime task. The task holds the future
//! inside a [`Delivery`], which it never drops itself: the delivery always travels back to the
//! loop thread, with the outcome or, if the task is dropped first, with [`Outcome::Abandoned`].
//! Like an asyncio task, a crossing is kept alive while its Rust side runs, whether or not
//! anyone still references its future, so `asyncio.shield(crossing)` protects the work (C6).
//!
//! Every event goes through the crossing's [`state`] machine in its
//! [`Shared`] cell: Python cancelling (the [`CrossingGuard`] done callback, or the cooperative
//! future's `cancel`), the outcome arriving (`settle`), the grace timer (`drive`).

use crate::attach::attach;
use crate::cancel::{cancel_message, is_cancellation, CancelMode, Shared};
use crate::err::{panic_message, BridgeError};
use crate::live::{LiveCrossing, LiveKey};
use crate::locals::TaskLocals;
use crate::queue::LoopQueue;
use crate::state::{self, Action, Event, Phase};
use pyo3::intern;
use pyo3::prelude::*;
use std::any::TypeId;
use std::future::Future;
use std::sync::{Arc, Weak};
use tokio_util::sync::CancellationToken;

/// How a crossing's Rust side ended.
pub(crate) enum Outcome<T> {
    /// `Ok(value)`: converted on the loop thread.
    Value(T),
    /// `Err(e)`: raised as the same exception object (C2), or, for a `CancelledError`, ends the
    /// future cancelled (C5).
    Error(PyErr),
    /// The future panicked; the message (C2).
    Panic(String),
    /// The token fired and the future was dropped (C3).
    Cancelled,
    /// The runtime dropped the task before it produced an outcome.
    Abandoned,
}

/// The Python half of a new crossing, created on the loop thread.
pub(crate) struct Crossing {
    /// The crossing's machine and token (fires when Python cancels or drops the future).
    pub(crate) shared: Arc<Shared>,
    /// Carries the outcome home.
    pub(crate) delivery: Delivery,
}

/// Creates the `asyncio.Future` for a crossing on `locals`' loop. Loop thread (or any attached
/// thread when the loop does not run yet); the returned future is the awaitable Python gets.
pub(crate) fn new_crossing<'py>(
    py: Python<'py>,
    locals: &TaskLocals,
    mode: CancelMode,
) -> PyResult<(Bound<'py, PyAny>, Crossing)> {
    let queue = Arc::clone(locals.queue(py)?);
    let shared = Arc::new(Shared::new(state::Crossing::running(mode.machine_mode())));
    let event_loop = locals.event_loop(py);
    // L1: pending on its loop until it settles (or the loop closes); refused on a closed loop.
    let weak: Weak<dyn LiveCrossing> = Arc::downgrade(&shared) as Weak<dyn LiveCrossing>;
    let key = queue.join(&event_loop, weak)?;
    let made = future_for(py, &event_loop, &shared, mode);
    let (py_fut, consumer) = match made {
        Ok(made) => made,
        Err(e) => {
            queue.leave(key);
            return Err(e);
        }
    };
    let delivery = Delivery {
        queue,
        target: Some(Target {
            fut: py_fut.clone().unbind(),
            consumer,
            shared: Arc::clone(&shared),
            key,
            locals: locals.clone(),
        }),
    };
    Ok((py_fut, Crossing { shared, delivery }))
}

/// The asyncio future of a new crossing, and how it is consumed. Attached.
fn future_for<'py>(
    py: Python<'py>,
    event_loop: &Bound<'py, PyAny>,
    shared: &Arc<Shared>,
    mode: CancelMode,
) -> PyResult<(Bound<'py, PyAny>, Consumer)> {
    Ok(match mode {
        CancelMode::Drop => {
            let fut = event_loop.call_method0(intern!(py, "create_future"))?;
            let guard = Py::new(
                py,
                CrossingGuard {
                    shared: Arc::clone(shared),
                },
            )?;
            fut.call_method1(intern!(py, "add_done_callback"), (&guard,))?;
            (fut, Consumer::Plain(guard))
        }
        CancelMode::Cooperative { .. } => (
            crate::cooperative::new_future(event_loop, Arc::clone(shared))?,
            Consumer::Cooperative,
        ),
    })
}

/// What an outcome is delivered to.
struct Target {
    /// The future; released on the loop thread with the rest.
    fut: Py<PyAny>,
    consumer: Consumer,
    shared: Arc<Shared>,
    /// The crossing's place among those pending on its loop (L1).
    key: LiveKey,
    /// Released on the loop thread with the rest; its queue holds the crossing's `key`.
    locals: TaskLocals,
}

/// What kind of future the consumer is.
enum Consumer {
    /// A `loop.create_future()` future ([`CancelMode::Drop`]) with its done callback, which is
    /// taken off again before the bridge ends the future itself (one scheduled callback less
    /// per crossing).
    Plain(Py<CrossingGuard>),
    /// A [`crate::cooperative`] future.
    Cooperative,
}

impl Consumer {
    /// Loop thread: is the future still pending? A plain future answers by losing its guard: a
    /// done future has already handed its callbacks to the loop, so nothing is removed. A
    /// cooperative one asks `done()` (only a bypassed `cancel()` can have ended it).
    fn is_pending(&self, fut: &Bound<'_, PyAny>) -> PyResult<bool> {
        match self {
            Consumer::Plain(guard) => fut
                .call_method1(intern!(fut.py(), "remove_done_callback"), (guard,))?
                .extract::<usize>()
                .map(|removed| removed > 0),
            Consumer::Cooperative => is_done(fut).map(|done| !done),
        }
    }

    /// Loop thread: ends the future cancelled with `msg` (C5: never `set_exception`).
    fn end_cancelled(&self, fut: &Bound<'_, PyAny>, msg: Option<String>) -> PyResult<()> {
        match self {
            Consumer::Plain(_) => fut
                .call_method1(intern!(fut.py(), "cancel"), (msg,))
                .map(drop),
            Consumer::Cooperative => crate::cooperative::end_cancelled(fut, msg),
        }
    }
}

/// Sends a crossing's outcome to the loop thread. Owned by the runtime task.
pub(crate) struct Delivery {
    queue: Arc<LoopQueue>,
    /// `Some` until the outcome is sent: by [`Delivery::send`] or, failing that, by `Drop`.
    target: Option<Target>,
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

/// Loop thread: the outcome arrived. The machine says whether to deliver it, end the future
/// cancelled, or drop it (C3, C5, C7).
fn settle<T>(py: Python<'_>, target: Target, outcome: Outcome<T>)
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let kind = match &outcome {
        Outcome::Value(_) => state::Outcome::Value,
        Outcome::Error(e) if is_cancellation(py, e) => state::Outcome::Cancellation,
        Outcome::Error(_) | Outcome::Panic(_) => state::Outcome::Error,
        Outcome::Cancelled => state::Outcome::Cancellation,
        Outcome::Abandoned => state::Outcome::Abandoned,
    };
    if let Ok(queue) = target.locals.queue(py) {
        queue.leave(target.key); // L1: no longer pending on the loop.
    }
    let shared = &target.shared;
    let fut = target.fut.bind(py);
    match target.consumer.is_pending(fut) {
        Ok(true) => {}
        // Python ended the future and the guard's callback has not run yet, or something
        // bypassed the cooperative `cancel()`: feed its `Cancel` now; the outcome is then
        // dropped (C7, never set twice).
        Ok(false) => observe_python_end(shared, fut),
        Err(e) => return e.write_unraisable(py, Some(fut)),
    }
    let result = match shared.on(Event::Finish(kind)) {
        Action::Deliver(_) => match outcome {
            Outcome::Value(v) => convert(py, v),
            Outcome::Error(e) => Err(e),
            Outcome::Panic(msg) => Err(BridgeError::Panic(msg).into()),
            Outcome::Abandoned => Err(BridgeError::Abandoned.into()),
            Outcome::Cancelled => return,
        },
        Action::EndCancelled => {
            // C5: through the future's own cancel, never `set_exception(CancelledError)`.
            // Python's own message when Python cancelled; else the returned CancelledError's.
            let msg = shared.reason().or_else(|| match &outcome {
                Outcome::Error(e) if kind == state::Outcome::Cancellation => cancel_message(py, e),
                _ => None,
            });
            if let Err(e) = target.consumer.end_cancelled(fut, msg) {
                e.write_unraisable(py, Some(fut));
            }
            return;
        }
        _ => return,
    };
    if let Err(e) = set_outcome(fut, result) {
        // asyncio refused it (e.g. `set_exception(StopIteration())` is a TypeError before 3.12).
        // The future must still end (C7): fail it with a RuntimeError caused by the refusal.
        let fallback = pyo3::exceptions::PyRuntimeError::new_err(
            "the Rust future's outcome could not be set on its asyncio future",
        );
        fallback.set_cause(py, Some(e));
        if !is_done(fut).unwrap_or(true) {
            if let Err(e) = set_outcome(fut, Err(fallback)) {
                e.write_unraisable(py, Some(fut));
            }
        }
    }
}

/// Loop thread: Python ended a default-mode crossing's future before the outcome arrived
/// (`cancel(msg)`, usually): `Cancel` with its message, which fires the token (C3).
fn observe_python_end(shared: &Shared, fut: &Bound<'_, PyAny>) {
    if matches!(shared.phase(), Phase::Ended(_)) {
        return; // Ended by the bridge itself: nothing to stop (invariant 6).
    }
    let reason = match fut.call_method0(intern!(fut.py(), "exception")) {
        Err(e) => cancel_message(fut.py(), &e),
        Ok(_) => None,
    };
    let _ = shared.cancel(reason);
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

/// Converts a result on the loop thread (on a `LocalSet`'s thread for a `!Send` result, R6).
/// `()` becomes `None` (PyO3 would give `()`), and a failing or panicking conversion fails only
/// this future (C2).
pub(crate) fn convert<T>(py: Python<'_>, value: T) -> PyResult<Py<PyAny>>
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

/// Done callback of a default-mode crossing's future. When Python ended the future itself
/// (cancelled it), the crossing's token fires (C3). When the bridge ended it, the guard was
/// taken off first (see `Consumer::is_pending`), and a late call changes nothing (invariant 6).
#[pyclass(frozen, module = "pyo3_async_bridge")]
struct CrossingGuard {
    shared: Arc<Shared>,
}

#[pymethods]
impl CrossingGuard {
    /// Loop thread, scheduled by the future when it is done.
    fn __call__(&self, fut: &Bound<'_, PyAny>) {
        observe_python_end(&self.shared, fut);
    }
}

/// The thread of a `!Send` crossing's task (a tokio `LocalSet`'s, or a generic runtime's local
/// task's): sends `outcome` home with its value converted here, attached (R6: the one exception
/// to A1's no-attach rule; `()` needs no attach). Only `Send` data leaves the thread.
pub(crate) fn send_converted<T>(delivery: Delivery, outcome: Outcome<T>)
where
    T: for<'py> IntoPyObject<'py> + 'static,
{
    let outcome: Outcome<Py<PyAny>> = match outcome {
        Outcome::Value(value) => {
            if TypeId::of::<T>() == TypeId::of::<()>() {
                // `None` on the loop thread (C2): nothing to convert here, no attach.
                drop(value);
                delivery.send(Outcome::Value(()));
                return;
            }
            match attach(|py| convert(py, value)) {
                Ok(object) => Outcome::Value(object),
                Err(e) => Outcome::Error(e),
            }
        }
        Outcome::Error(e) => Outcome::Error(e),
        Outcome::Panic(msg) => Outcome::Panic(msg),
        Outcome::Cancelled => Outcome::Cancelled,
        Outcome::Abandoned => Outcome::Abandoned,
    };
    delivery.send(outcome);
}

/// Runs `fut` to its [`Outcome`], with panics caught (C2).
///
/// # Cancellation
/// `fut` is dropped when the machine says `Stop`: at once after a Python cancel in
/// [`CancelMode::Drop`]; in cooperative mode only when the grace period, which starts with the
/// machine's `Signal`, runs out (C3). Either way `fut` is dropped here, inside the caller's
/// scope. Tokens handed to user code are children, so their `cancel()` changes nothing here.
pub(crate) async fn drive<F, T>(shared: Arc<Shared>, mode: CancelMode, fut: F) -> Outcome<T>
where
    F: Future<Output = PyResult<T>>,
{
    use futures::FutureExt;
    // Declared first, so dropped last: after `fut`, however `drive` ends (L2's exit wait).
    let _done = ProducerDone(&shared);
    let guarded = std::panic::AssertUnwindSafe(fut).catch_unwind();
    let finished = match mode {
        CancelMode::Drop | CancelMode::Cooperative { grace: None } => {
            until_stopped(shared.stop_token(), guarded).await
        }
        #[cfg(feature = "tokio-runtime")]
        CancelMode::Cooperative { grace: Some(grace) } => {
            let grace_timer = async {
                shared.signal_token().cancelled().await;
                ::tokio::time::sleep(grace).await;
                // `Stop` (the machine still waits for this producer) fires the stop token.
                let _ = shared.on(Event::GraceExpired);
                std::future::pending::<()>().await
            };
            ::tokio::select! {
                biased;
                () = shared.stop_token().cancelled() => None,
                () = grace_timer => None,
                r = guarded => Some(r),
            }
        }
        // Without tokio there is no timer, and no entry point that takes a `CancelMode`: only
        // `tokio::future_into_py_with_options` makes cooperative crossings.
        #[cfg(not(feature = "tokio-runtime"))]
        CancelMode::Cooperative { grace: Some(_) } => {
            until_stopped(shared.stop_token(), guarded).await
        }
    };
    match finished {
        None => Outcome::Cancelled,
        Some(Ok(Ok(v))) => Outcome::Value(v),
        Some(Ok(Err(e))) => Outcome::Error(e),
        Some(Err(payload)) => Outcome::Panic(panic_message(&*payload)),
    }
}

/// `fut`'s output, or `None` once `stop` fired: the token is looked at first (`select` polls
/// its first future first), so a stopped future is never polled again (tokio-util's
/// `run_until_cancelled` polls the future first). Whatever a future returns after the stop, in
/// response to it, is therefore never taken for its outcome; what it returned in a poll that
/// began before the stop is (L2).
async fn until_stopped<F: Future>(stop: &CancellationToken, fut: F) -> Option<F::Output> {
    use futures::future::{select, Either};
    match select(std::pin::pin!(stop.cancelled()), std::pin::pin!(fut)).await {
        Either::Left(_) => None,
        Either::Right((output, _)) => Some(output),
    }
}

/// Reports the Rust future gone when dropped (runtime thread): the exit hook waits for it (L2).
struct ProducerDone<'a>(&'a Shared);

impl Drop for ProducerDone<'_> {
    fn drop(&mut self) {
        self.0.producer_done();
    }
}
