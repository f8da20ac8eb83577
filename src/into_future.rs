//! Rust awaits Python: [`PyFuture`] (rules C2, C7, C8, C9).
//!
//! The awaitable becomes an asyncio task on its loop thread, started inside a copy of the
//! crossing's context. The task's done callback sends the outcome through a oneshot channel;
//! the runtime side only ever polls the receiver, so it needs no interpreter.

use crate::err::describe;
use crate::err::BridgeError;
use crate::locals::TaskLocals;
use crate::queue::LoopQueue;
use futures::channel::oneshot;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

type Sender = oneshot::Sender<PyResult<Py<PyAny>>>;

/// A Python awaitable running as an asyncio task, awaited from Rust.
///
/// The output is exactly `PyResult<Py<PyAny>>`, as in `pyo3-async-runtimes`.
#[must_use = "futures do nothing unless polled"]
pub struct PyFuture {
    rx: oneshot::Receiver<PyResult<Py<PyAny>>>,
    link: Arc<Link>,
    queue: Arc<LoopQueue>,
}

/// The task a [`PyFuture`] awaits, shared by the `PyFuture` and the task's [`Completer`].
///
/// asyncio holds tasks only weakly, so the bridge holds the running task strongly: from its
/// start (loop thread) until it is done (the completer, loop thread) or the `PyFuture` is
/// dropped (any thread; the reference then travels home through the queue).
#[derive(Default)]
struct Link {
    task: Mutex<Option<Py<PyAny>>>,
}

impl Link {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Py<PyAny>>> {
        self.task.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loop thread: holds the task just started.
    fn hold(&self, task: Py<PyAny>) {
        *self.slot() = Some(task);
    }

    /// Any thread: lets go of the task (to be released attached, see `PyFuture::drop`).
    fn take(&self) -> Option<Py<PyAny>> {
        self.slot().take()
    }
}

impl Future for PyFuture {
    type Output = PyResult<Py<PyAny>>;

    /// Any thread. The oneshot registers the waker and the loop thread's send wakes it, so no
    /// wakeup can be lost between the check and the registration.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(BridgeError::AwaitableDropped.into())))
    }
}

impl Drop for PyFuture {
    fn drop(&mut self) {
        // After `close`, the loop thread's send either fails (and the value is dropped there,
        // attached) or has already succeeded, and `try_recv` hands us the value, which must go
        // home unless this thread is attached.
        self.rx.close();
        let value = self.rx.try_recv().ok().flatten();
        let task = self.link.take();
        if value.is_some() || task.is_some() {
            self.queue.release((value, task));
        }
    }
}

impl std::fmt::Debug for PyFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyFuture").finish_non_exhaustive()
    }
}

/// Runs `awaitable` as a task on `locals`' loop and returns a future of its result.
///
/// Any attached thread. On the loop thread the task is created at once; elsewhere the request
/// travels through the loop's delivery queue.
///
/// # Contextvars
/// The task runs in its own copy of `locals`' context (C8): it sees the values set there, and
/// its changes do not flow back.
///
/// # Errors
/// `TypeError` when `awaitable` cannot be awaited or the loop is not usable (C9).
pub fn into_future_with_locals(
    locals: &TaskLocals,
    awaitable: Bound<'_, PyAny>,
) -> PyResult<PyFuture> {
    let py = awaitable.py();
    let is_coro = is_coroutine(&awaitable);
    if !is_coro {
        check_awaitable(&awaitable)?;
    }
    let queue = Arc::clone(locals.queue(py)?);
    let (tx, rx) = oneshot::channel();
    let link = Arc::new(Link::default());
    let completer = Completer {
        tx: Some(tx),
        link: Arc::clone(&link),
    };
    let running = crate::py::running_loop_or_none(py)?;
    if running.is(locals.event_loop(py)) {
        start(locals, awaitable, is_coro, completer);
    } else {
        let locals = locals.clone();
        let awaitable = awaitable.unbind();
        queue.push(Box::new(move |py| {
            start(&locals, awaitable.into_bound(py), is_coro, completer)
        }));
    }
    Ok(PyFuture { rx, link, queue })
}

/// For objects that are not coroutines: futures, tasks, `__await__` and generator-based
/// coroutines pass.
fn check_awaitable(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = obj.py();
    if obj.hasattr(intern!(py, "__await__"))?
        || crate::py::isawaitable(py)?.call1((obj,))?.is_truthy()?
    {
        Ok(())
    } else {
        Err(BridgeError::NotAwaitable(describe(obj)).into())
    }
}

fn is_coroutine(obj: &Bound<'_, PyAny>) -> bool {
    crate::py::coroutine_type(obj.py()).is_ok_and(|t| obj.get_type().is(t))
}

/// Loop thread: creates the task, holds it in the link and hooks its completion to the
/// completer.
fn start(
    locals: &TaskLocals,
    awaitable: Bound<'_, PyAny>,
    is_coro: bool,
    mut completer: Completer,
) {
    let py = awaitable.py();
    match create_task(locals, awaitable.clone(), is_coro) {
        Ok(task) => {
            completer.link.hold(task.clone().unbind());
            if let Err(e) = task.call_method1(intern!(py, "add_done_callback"), (completer,)) {
                // The completer is dropped with its sender: the receiver reports
                // AwaitableDropped rather than hanging.
                e.write_unraisable(py, Some(&task));
            }
        }
        Err(e) => {
            // A coroutine that never became a task is closed, never left un-awaited.
            if is_coro {
                let _ = awaitable.call_method0(intern!(py, "close"));
            }
            completer.send(Err(e));
        }
    }
}

/// `ctx.run(loop.create_task, coro)`: the task copies `ctx` at creation (C8).
fn create_task<'py>(
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

/// Done callback of the task a [`PyFuture`] awaits. Loop thread.
#[pyclass(module = "pyo3_async_bridge")]
struct Completer {
    tx: Option<Sender>,
    link: Arc<Link>,
}

impl Completer {
    /// Loop thread: hands the outcome to the `PyFuture` and lets go of the task.
    fn send(&mut self, result: PyResult<Py<PyAny>>) {
        drop(self.link.take());
        if let Some(tx) = self.tx.take() {
            // A failed send returns the value; it is dropped right here, attached.
            let _ = tx.send(result);
        }
    }
}

#[pymethods]
impl Completer {
    fn __call__(&mut self, task: &Bound<'_, PyAny>) {
        let result = task
            .call_method0(intern!(task.py(), "result"))
            .map(Bound::unbind);
        self.send(result);
    }
}
