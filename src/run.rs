//! Running a Rust future as the main work of an event loop (rules R2, R3), for every runtime:
//! `tokio::run`, `generic::run` and `async_std::run` (and their `run_until_complete`) are this
//! module with the runtime's way of spawning a crossing ([`SpawnCrossing`]).
//!
//! The future becomes an ordinary crossing (Python awaits Rust) on the loop, carrying the
//! bridge's [`TaskLocals`] with a copy of the caller's context (C1, C8). Its value travels back
//! through a slot rather than through Python, so `T` needs no conversion.
//!
//! # Invariants
//! 1. When these functions return, the Rust future has been dropped: cancelled crossings are
//!    waited for with the loop still running, so the jobs their drop sends to the loop (a
//!    `PyFuture` cancelling its task, C4) run before the loop is closed. The one exception is
//!    the way out of a drop that does not end: a second Ctrl-C (R3) stops that wait, and what
//!    the drop sends later meets a closed loop (L1).
//! 2. Nothing is spawned when the call is refused (a loop already running in this thread, a
//!    closed loop, an object that is no loop).

use crate::err::{describe, BridgeError};
use crate::interrupt::Interrupt;
use crate::TaskLocals;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// How a runtime makes a crossing (Python awaits Rust) of a boxed future with given locals:
/// its `future_into_py_with_locals`. A plain function, so that both crossings of a run (the
/// main one and the wait for its drop) use it.
pub(crate) type SpawnCrossing = for<'py> fn(
    Python<'py>,
    TaskLocals,
    BoxFuture<'static, PyResult<()>>,
) -> PyResult<Bound<'py, PyAny>>;

/// `run_until_complete` of every runtime: see `tokio::run_until_complete` for the contract.
pub(crate) fn run_until_complete<F, T>(
    spawn: SpawnCrossing,
    event_loop: &Bound<'_, PyAny>,
    fut: F,
) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let main = Main::start(spawn, event_loop, "run_until_complete", fut)?;
    main.finish(event_loop, None)
}

/// `run` of every runtime: see `tokio::run` for the contract.
pub(crate) fn run<F, T>(spawn: SpawnCrossing, py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    refuse_if_running(py, "run")?;
    let asyncio = py.import("asyncio")?;
    let event_loop = asyncio.call_method0(intern!(py, "new_event_loop"))?;
    let outcome = asyncio
        .call_method1(intern!(py, "set_event_loop"), (&event_loop,))
        .and_then(|_| run_main(spawn, &event_loop, fut));
    let closed = close(&asyncio, &event_loop);
    let value = outcome?;
    closed.map(|()| value)
}

/// `run`'s middle part: the main crossing, with the Ctrl-C handler around it.
fn run_main<F, T>(spawn: SpawnCrossing, event_loop: &Bound<'_, PyAny>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let main = Main::start(spawn, event_loop, "run", fut)?;
    let interrupt = Interrupt::install(event_loop, &main.future)?;
    let outcome = main.finish(event_loop, interrupt.as_ref());
    let restored = interrupt.map_or(Ok(()), |i| i.restore(event_loop));
    let value = outcome?;
    restored.map(|()| value)
}

/// The main crossing of a loop run: its asyncio future, where its value lands, and how to
/// learn that the Rust future is gone.
struct Main<'py, T> {
    spawn: SpawnCrossing,
    future: Bound<'py, PyAny>,
    locals: TaskLocals,
    slot: Arc<Mutex<Option<T>>>,
    /// Closed when the Rust future (which holds the sender) is dropped, completed or not.
    dropped: oneshot::Receiver<()>,
    /// Lets the Rust future begin: opened by `finish`, once whatever `run` sets up around the
    /// crossing (the Ctrl-C handler) is in place. Dropped unopened, the future begins anyway.
    gate: oneshot::Sender<()>,
}

impl<'py, T: Send + Sync + 'static> Main<'py, T> {
    /// Loop thread, before the loop runs. Invariant 2: every refusal comes before the spawn.
    fn start<F>(
        spawn: SpawnCrossing,
        event_loop: &Bound<'py, PyAny>,
        entry: &'static str,
        fut: F,
    ) -> PyResult<Self>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
    {
        let py = event_loop.py();
        refuse_if_running(py, entry)?;
        if !event_loop.hasattr(intern!(py, "run_until_complete"))? {
            return Err(BridgeError::NotALoop(describe(event_loop)).into());
        }
        if event_loop
            .call_method0(intern!(py, "is_closed"))?
            .is_truthy()?
        {
            return Err(BridgeError::ClosedLoopGiven(describe(event_loop)).into());
        }
        let locals = TaskLocals::new(event_loop.clone()).copy_context(py)?;
        let slot = Arc::new(Mutex::new(None));
        let (notice, dropped) = oneshot::channel::<()>();
        let filled = Arc::clone(&slot);
        let (gate, opened) = oneshot::channel::<()>();
        let work = async move {
            // Runtime thread. The user's future starts once `finish` opens the gate: the loop
            // is about to run and the Ctrl-C handler (if any) is installed.
            let _ = opened.await;
            let value = fut.await?;
            *filled.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
            Ok(())
        };
        let future = spawn(
            py,
            locals.clone(),
            Box::pin(DropNotice {
                fut: work,
                _notice: notice,
            }),
        )?;
        Ok(Main {
            spawn,
            future,
            locals,
            slot,
            dropped,
            gate,
        })
    }

    /// Loop thread: runs the loop until the crossing is done and its Rust future dropped
    /// (invariant 1), then returns the value, or the error the loop run ended with.
    fn finish(self, event_loop: &Bound<'py, PyAny>, interrupt: Option<&Interrupt>) -> PyResult<T> {
        let py = event_loop.py();
        let Main {
            spawn,
            future,
            locals,
            slot,
            dropped,
            gate,
        } = self;
        let _ = gate.send(());
        let ran = event_loop.call_method1(intern!(py, "run_until_complete"), (&future,));
        let waited = await_drop(spawn, event_loop, &future, locals, dropped);
        let value = match ran {
            Ok(_) => slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .ok_or_else(|| PyRuntimeError::new_err("the main future produced no value")),
            Err(_) if interrupt.is_some_and(Interrupt::fired) && is_cancelled(&future) => {
                Err(PyKeyboardInterrupt::new_err(()))
            }
            Err(e) => Err(e),
        }?;
        waited.map(|()| value)
    }
}

/// Loop thread: if the main crossing is still pending (the loop stopped early) it is
/// cancelled; then the loop runs until the Rust future is dropped (invariant 1).
///
/// No lost wakeup: the Rust future drops its sender on a runtime thread; the receiver is
/// awaited by a crossing on the same runtime, which the sender's drop wakes whether it happened
/// before or after that crossing started (the channel's state is one atomic).
fn await_drop(
    spawn: SpawnCrossing,
    event_loop: &Bound<'_, PyAny>,
    future: &Bound<'_, PyAny>,
    locals: TaskLocals,
    mut dropped: oneshot::Receiver<()>,
) -> PyResult<()> {
    let py = event_loop.py();
    if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
        future.call_method0(intern!(py, "cancel"))?;
    }
    // `Ok(None)`: the sender is still alive (the Rust future not dropped yet).
    if !matches!(dropped.try_recv(), Ok(None)) {
        return Ok(());
    }
    let gone = spawn(
        py,
        locals,
        Box::pin(async move {
            let _ = dropped.await;
            Ok(())
        }),
    )?;
    event_loop
        .call_method1(intern!(py, "run_until_complete"), (gone,))
        .map(drop)
}

/// `fut`, then a notice that it is gone. Fields drop in declaration order: whatever `fut`'s drop
/// sends to the loop (a `PyFuture` cancelling its task) is queued before the notice goes out.
#[pin_project::pin_project]
struct DropNotice<F> {
    #[pin]
    fut: F,
    _notice: oneshot::Sender<()>,
}

impl<F: Future> Future for DropNotice<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

fn is_cancelled(future: &Bound<'_, PyAny>) -> bool {
    future
        .call_method0(intern!(future.py(), "cancelled"))
        .and_then(|c| c.is_truthy())
        .unwrap_or(false)
}

/// R2: neither entry runs a loop inside a running one (asyncio would refuse too, but only
/// after the crossing had been spawned).
fn refuse_if_running(py: Python<'_>, entry: &'static str) -> PyResult<()> {
    if crate::py::running_loop_or_none(py)?.is_none() {
        Ok(())
    } else {
        Err(BridgeError::LoopRunning(entry).into())
    }
}

/// Loop thread: the end of `run`, as in `asyncio.run`: cancel and await what is left, shut
/// down async generators and the default executor, unset the loop, close it. Every step is
/// tried; the first error is returned.
fn close(asyncio: &Bound<'_, PyModule>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = event_loop.py();
    let run_method = |name: &Bound<'_, pyo3::types::PyString>| -> PyResult<()> {
        if !event_loop.hasattr(name)? {
            return Ok(());
        }
        let aw = event_loop.call_method0(name)?;
        event_loop
            .call_method1(intern!(py, "run_until_complete"), (aw,))
            .map(drop)
    };
    let steps = [
        cancel_all_tasks(asyncio, event_loop),
        run_method(intern!(py, "shutdown_asyncgens")),
        run_method(intern!(py, "shutdown_default_executor")),
    ];
    let unset = asyncio.call_method1(intern!(py, "set_event_loop"), (py.None(),));
    let closed = event_loop.call_method0(intern!(py, "close"));
    let [a, b, c] = steps;
    a.and(b).and(c).and(unset.map(drop)).and(closed.map(drop))
}

/// Loop thread: cancels every task still on the loop and runs the loop until they are done.
/// A task that ended with an error other than its cancellation is reported to the loop's
/// exception handler, as `asyncio.run` does.
fn cancel_all_tasks(asyncio: &Bound<'_, PyModule>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = event_loop.py();
    let tasks: Vec<Bound<'_, PyAny>> = asyncio
        .call_method1(intern!(py, "all_tasks"), (event_loop,))?
        .try_iter()?
        .collect::<PyResult<_>>()?;
    if tasks.is_empty() {
        return Ok(());
    }
    for task in &tasks {
        task.call_method0(intern!(py, "cancel"))?;
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "return_exceptions"), true)?;
    let gathered = asyncio.call_method(
        intern!(py, "gather"),
        pyo3::types::PyTuple::new(py, &tasks)?,
        Some(&kwargs),
    )?;
    event_loop.call_method1(intern!(py, "run_until_complete"), (gathered,))?;
    for task in &tasks {
        if task.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            continue;
        }
        let exc = task.call_method0(intern!(py, "exception"))?;
        if exc.is_none() {
            continue;
        }
        let context = PyDict::new(py);
        context.set_item(
            "message",
            "unhandled exception during pyo3_async_bridge run() shutdown",
        )?;
        context.set_item("exception", exc)?;
        context.set_item("task", task)?;
        event_loop.call_method1(intern!(py, "call_exception_handler"), (context,))?;
    }
    Ok(())
}
