//! Rust awaits Python: [`PyFuture`] (rules C2, C4, C5, C7, C8, C9).
//!
//! The awaitable becomes an asyncio task on its loop thread, started inside a copy of the
//! crossing's context. The task's done callback sends the outcome through a oneshot channel;
//! the runtime side only ever polls the receiver, so it needs no interpreter.
//!
//! The crossing's [`state`] machine lives in the [`Link`] that the `PyFuture`
//! and the loop thread share: the task starting, the task finishing, and the `PyFuture` being
//! dropped or detached all go through it, so a drop cancels the task exactly when the task
//! still runs, and a coroutine whose task never started is closed (C4).

use crate::cancel::{is_cancellation, DROP_CANCEL_MESSAGE};
use crate::err::BridgeError;
use crate::live::{LiveCrossing, LiveKey};
use crate::locals::TaskLocals;
use crate::queue::LoopQueue;
use crate::state::{self, Action, Event, Mode, Phase};
use crate::task::{
    check_awaitable, close_unstarted, create_task, discard, is_coroutine, Unstarted,
};
use futures::channel::oneshot;
use pyo3::intern;
use pyo3::prelude::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};

type Sender = oneshot::Sender<PyResult<Py<PyAny>>>;

/// A Python awaitable running as an asyncio task, awaited from Rust.
///
/// The output is exactly `PyResult<Py<PyAny>>`, as in `pyo3-async-runtimes`.
///
/// # Cancellation
/// Dropping a `PyFuture` before it completes cancels the Python task on its loop with
/// [`DROP_CANCEL_MESSAGE`]: its `finally` and
/// `except CancelledError` blocks run (C4). This covers `tokio::time::timeout`, the losers of
/// `select!`, a cancelled outer crossing and a `PyFuture` that was never polled. A coroutine
/// whose task has not started yet is closed instead. [`PyFuture::detach`] lets the task run on.
/// An asyncio future or task handed to `into_future` is the task here: dropping the `PyFuture`
/// cancels it for every other awaiter too (detach when it is shared).
///
/// If the task is cancelled (or raises `CancelledError`), the `PyFuture` resolves to that
/// error; [`is_cancellation`] tells it apart from other errors (C5).
#[must_use = "dropping a PyFuture cancels its Python task; call `detach()` to let it run"]
pub struct PyFuture {
    rx: oneshot::Receiver<PyResult<Py<PyAny>>>,
    link: Arc<Link>,
}

/// The crossing a [`PyFuture`] awaits, shared by the `PyFuture`, the task's [`Completer`] and
/// (weakly) the loop's set of pending crossings (L1).
///
/// asyncio holds tasks only weakly, so the bridge holds the running task strongly: from its
/// start (loop thread) until it is done (the completer, loop thread), the `PyFuture` is
/// dropped (any thread; the reference then travels home through the queue), or the loop is
/// found closed (the watchdog, attached).
struct Link {
    inner: Mutex<Linked>,
    queue: Arc<LoopQueue>,
    /// The crossing's place among those pending on its loop; set once, right after creation.
    key: OnceLock<LiveKey>,
}

struct Linked {
    machine: state::Crossing,
    task: Option<Py<PyAny>>,
    /// The `PyFuture`'s end of the outcome; taken by whoever ends the crossing.
    tx: Option<Sender>,
}

impl Link {
    fn new(queue: Arc<LoopQueue>, tx: Sender) -> Self {
        Link {
            inner: Mutex::new(Linked {
                machine: state::Crossing::new(Mode::Drop),
                task: None,
                tx: Some(tx),
            }),
            queue,
            key: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Linked> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loop thread: the crossing is over on the loop's side; no longer pending (L1).
    fn settled(&self) {
        if let Some(key) = self.key.get() {
            self.queue.leave(*key);
        }
    }
}

impl LiveCrossing for Link {
    /// L1, the watchdog, attached: the `PyFuture` fails with the loop's error now, and the
    /// task is let go here (a task the bridge created does not log "destroyed but pending").
    fn loop_closed(&self, py: Python<'_>) {
        let (action, task, tx) = {
            let mut linked = self.lock();
            let action = linked.machine.on(Event::LoopClosed);
            (action, linked.task.take(), linked.tx.take())
        };
        if matches!(action, Action::Stop | Action::Discard) {
            if let Some(tx) = tx {
                let _ = tx.send(Err(BridgeError::LoopClosed.into()));
            }
        }
        if let Some(task) = task {
            let_go_quietly(task.bind(py));
        }
    }
}

impl PyFuture {
    /// Stops waiting and lets the Python task run to its end; its outcome is dropped on the loop
    /// thread. Without this, dropping the `PyFuture` cancels the task (C4).
    pub fn detach(self) {
        let _ = self.link.lock().machine.on(Event::Detach);
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
    /// Any thread. The machine arbitrates with the loop thread's start and completion: `Stop`
    /// means the task runs (or is being created) and must be cancelled. If `start` is creating
    /// the task right now, the slot is still empty and `start` sees the ended phase and cancels
    /// the task itself, so no cancellation is lost.
    fn drop(&mut self) {
        // After `close`, the loop thread's send either fails (and the value is dropped there,
        // attached) or has already succeeded, and `try_recv` hands us the value, which must go
        // home unless this thread is attached.
        self.rx.close();
        let value = self.rx.try_recv().ok().flatten();
        let task = {
            let mut linked = self.link.lock();
            match linked.machine.on(Event::Cancel) {
                Action::Stop => linked.task.take(),
                _ => None,
            }
        };
        if let Some(task) = task {
            // Loop thread, through the queue: C4. Dropped unrun (the loop closed first, L1),
            // the task is let go quietly.
            let task = QuietTask(Some(task));
            self.link.queue.push(Box::new(move |py| {
                if let Some(task) = task.take() {
                    cancel_task(task.bind(py));
                }
                drop(value);
            }));
        } else if value.is_some() {
            self.link.queue.release(value);
        }
    }
}

/// The bridge lets go of a task whose loop closed under it (L1): asyncio must not report it
/// "destroyed but pending", as `run_until_complete` does for the task it made. Attached.
fn let_go_quietly(task: &Bound<'_, PyAny>) {
    // A loop whose tasks lack the flag keeps its default.
    let _ = task.setattr(intern!(task.py(), "_log_destroy_pending"), false);
}

/// A task on its way to be cancelled on the loop thread. If the job carrying it is dropped
/// unrun (its loop closed, L1), the task is let go quietly. Jobs are dropped only attached.
struct QuietTask(Option<Py<PyAny>>);

impl QuietTask {
    fn take(mut self) -> Option<Py<PyAny>> {
        self.0.take()
    }
}

impl Drop for QuietTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            crate::ffi::if_attached(|py| let_go_quietly(task.bind(py)));
        }
    }
}

/// Loop thread: `task.cancel(DROP_CANCEL_MESSAGE)` (C4).
fn cancel_task(task: &Bound<'_, PyAny>) {
    if let Err(e) = task.call_method1(intern!(task.py(), "cancel"), (DROP_CANCEL_MESSAGE,)) {
        e.write_unraisable(task.py(), Some(task));
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
    let is_coro = is_coroutine(&awaitable);
    let _entry = enter_or_close(&awaitable, is_coro)?;
    into_future_entered(locals, awaitable, is_coro)
}

/// L3: no new crossing once the interpreter exits (the coroutine is closed); otherwise the
/// frame is counted until the guard drops. Attached.
pub(crate) fn enter_or_close(
    awaitable: &Bound<'_, PyAny>,
    is_coro: bool,
) -> PyResult<crate::exit::Entry> {
    crate::exit::enter().map_err(|e| {
        close_unstarted(awaitable, is_coro);
        e.into()
    })
}

/// [`into_future_with_locals`] inside an entry made by the caller ([`enter_or_close`]).
pub(crate) fn into_future_entered(
    locals: &TaskLocals,
    awaitable: Bound<'_, PyAny>,
    is_coro: bool,
) -> PyResult<PyFuture> {
    let py = awaitable.py();
    let queue = match check_awaitable_if(&awaitable, is_coro).and_then(|()| locals.queue(py)) {
        Ok(queue) => Arc::clone(queue),
        Err(e) => {
            close_unstarted(&awaitable, is_coro);
            return Err(e);
        }
    };
    let (tx, rx) = oneshot::channel();
    let event_loop = locals.event_loop(py);
    let on_loop_thread = crate::watch::on_loop_thread(&event_loop);
    let link = Arc::new(Link::new(queue, tx));
    // L1: pending on its loop until the task is done (or the loop closes); refused on a
    // closed loop.
    let weak: Weak<dyn LiveCrossing> = Arc::downgrade(&link) as Weak<dyn LiveCrossing>;
    let key = match link.queue.join(&event_loop, weak) {
        Ok(key) => key,
        Err(e) => {
            close_unstarted(&awaitable, is_coro);
            return Err(e);
        }
    };
    let _ = link.key.set(key);
    let completer = Completer {
        link: Arc::clone(&link),
    };
    if on_loop_thread {
        start(locals, awaitable, is_coro, completer);
    } else {
        let locals = locals.clone();
        // Dropped unrun (its loop closed first), it closes the coroutine.
        let unstarted = Unstarted::new(awaitable, is_coro);
        link.queue.push(Box::new(move |py| {
            if let Some(awaitable) = unstarted.take(py) {
                start(&locals, awaitable, is_coro, completer);
            }
        }));
    }
    Ok(PyFuture { rx, link })
}

/// Coroutines pass without a check (the fast path); anything else must be awaitable.
fn check_awaitable_if(awaitable: &Bound<'_, PyAny>, is_coro: bool) -> PyResult<()> {
    if is_coro {
        Ok(())
    } else {
        check_awaitable(awaitable)
    }
}

/// Loop thread: creates the task, holds it in the link and hooks its completion to the
/// completer. A `PyFuture` dropped before this runs means the awaitable never starts (C4).
fn start(
    locals: &TaskLocals,
    awaitable: Bound<'_, PyAny>,
    is_coro: bool,
    mut completer: Completer,
) {
    let py = awaitable.py();
    if completer.link.lock().machine.on(Event::Start) != Action::Run {
        completer.link.settled();
        return discard(&awaitable, is_coro);
    }
    match create_task(locals, awaitable.clone(), is_coro) {
        Ok(task) => {
            {
                let mut linked = completer.link.lock();
                match linked.machine.phase() {
                    // Dropped while the task was being created: cancel it now (see
                    // `PyFuture::drop`).
                    Phase::Ended(state::End::Cancelled) => {
                        drop(linked);
                        cancel_task(&task);
                    }
                    _ => linked.task = Some(task.clone().unbind()),
                }
            }
            let link = Arc::clone(&completer.link);
            let completer = match Py::new(py, completer) {
                Ok(c) => c,
                Err(e) => {
                    // Nothing will report the task's end: the `PyFuture` learns it from its
                    // dropped sender, and the crossing is no longer pending (L1).
                    link.lock().task = None;
                    link.settled();
                    return e.write_unraisable(py, Some(&task));
                }
            };
            if let Err(e) = task.call_method1(intern!(py, "add_done_callback"), (&completer,)) {
                // Nothing will report the task's end: the `PyFuture` gets this error now, and the
                // completer lets go of the task here, attached (A1), whatever the machine says.
                completer.borrow_mut(py).send(py, Err(e));
            }
        }
        Err(e) => {
            close_unstarted(&awaitable, is_coro);
            completer.send(py, Err(e));
        }
    }
}

/// Done callback of the task a [`PyFuture`] awaits. Loop thread.
#[pyclass(module = "pyo3_async_bridge")]
struct Completer {
    link: Arc<Link>,
}

impl Completer {
    /// Loop thread: lets go of the task and hands the outcome to the `PyFuture`, unless the
    /// machine says nobody wants it (dropped or detached); then it is dropped right here,
    /// attached (C7).
    fn send(&mut self, py: Python<'_>, result: PyResult<Py<PyAny>>) {
        let kind = match &result {
            Ok(_) => state::Outcome::Value,
            Err(e) if is_cancellation(py, e) => state::Outcome::Cancellation,
            Err(_) => state::Outcome::Error,
        };
        let (action, task, tx) = {
            let mut linked = self.link.lock();
            let action = linked.machine.on(Event::Finish(kind));
            (action, linked.task.take(), linked.tx.take())
        };
        self.link.settled();
        drop(task);
        if matches!(action, Action::Deliver(_) | Action::EndCancelled) {
            if let Some(tx) = tx {
                // A failed send returns the value; it is dropped right here, attached.
                let _ = tx.send(result);
            }
        }
    }
}

#[pymethods]
impl Completer {
    fn __call__(&mut self, task: &Bound<'_, PyAny>) {
        let py = task.py();
        let result = task.call_method0(intern!(py, "result")).map(Bound::unbind);
        self.send(py, result);
    }
}
