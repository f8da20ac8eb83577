//! Cancellation of a crossing (rules C3–C6): the shared cell that holds its [`state`] machine
//! and token, the options a crossing is created with, and telling a cancellation apart from an
//! ordinary error.
//!
//! [`state`]: crate::state

use crate::state::{Action, Crossing, Event, Mode, Phase};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The message a Python task is cancelled with when the [`PyFuture`](crate::PyFuture) awaiting
/// it is dropped before it completes (C4).
pub const DROP_CANCEL_MESSAGE: &str =
    "pyo3-async-bridge: the Rust future awaiting this task was dropped";

/// The message a crossing's future is cancelled with when the interpreter exits while its Rust
/// future still runs (L2), and what [`cancellation_reason`](crate::tokio::cancellation_reason)
/// says then.
pub const EXIT_CANCEL_MESSAGE: &str = "pyo3-async-bridge: the Python interpreter is exiting";

/// What happens to the Rust future when Python cancels the future that awaits it (C3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelMode {
    /// The crossing's token fires and the Rust future is dropped at once, on a runtime thread,
    /// inside the crossing's scope. The Python future is cancelled immediately. The default, as
    /// in `pyo3-async-runtimes`.
    #[default]
    Drop,
    /// The crossing's token fires and the Rust future keeps running so that it can clean up;
    /// the Python future stays pending until the Rust future finishes, then ends cancelled,
    /// whatever it returned. With a `grace` period, the Rust future is dropped when it has not
    /// finished that long after the token fired.
    Cooperative {
        /// How long the Rust future may take once the token fired; `None` waits for it.
        grace: Option<Duration>,
    },
}

impl CancelMode {
    pub(crate) fn machine_mode(self) -> Mode {
        match self {
            CancelMode::Drop => Mode::Drop,
            CancelMode::Cooperative { .. } => Mode::Cooperative,
        }
    }
}

/// Options of a crossing where Python awaits Rust, for `tokio::future_into_py_with_options`.
///
/// # Examples
/// ```
/// use pyo3_async_bridge::{CancelMode, IntoPyOptions};
/// use std::time::Duration;
///
/// let options = IntoPyOptions::new().cancel_mode(CancelMode::Cooperative {
///     grace: Some(Duration::from_secs(5)),
/// });
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
pub struct IntoPyOptions {
    pub(crate) locals: Option<crate::TaskLocals>,
    pub(crate) cancel: CancelMode,
}

impl IntoPyOptions {
    /// The defaults: the current locals and [`CancelMode::Drop`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `locals` instead of the current locals.
    #[must_use]
    pub fn locals(mut self, locals: crate::TaskLocals) -> Self {
        self.locals = Some(locals);
        self
    }

    /// Sets what happens when Python cancels.
    #[must_use]
    pub fn cancel_mode(mut self, mode: CancelMode) -> Self {
        self.cancel = mode;
        self
    }
}

/// One crossing's state machine and tokens, shared by whoever observes its events: the loop
/// thread (Python cancels, an outcome arrives) and runtime threads (grace, `PyFuture` drop).
///
/// Two tokens, both fired only by the machine's answers, never by user code:
/// - `stop` fires on [`Action::Stop`]: the Rust future (and every task the bridge's `spawn`
///   made from it) is dropped now.
/// - `signal`, a child of `stop`, fires on [`Action::Signal`] too: the cooperative notice. The
///   tokens users get from `cancellation_token()` are children of it, so cancelling one of
///   them never cancels the crossing behind the machine's back.
///
/// The lock is held only around a transition, never while Python code runs or a token fires.
pub(crate) struct Shared {
    machine: Mutex<Crossing>,
    stop: CancellationToken,
    signal: CancellationToken,
    /// Set by the runtime thread once the Rust future is gone (finished or dropped); the exit
    /// hook waits for it (L2).
    producer_done: AtomicBool,
}

impl Shared {
    pub(crate) fn new(machine: Crossing) -> Self {
        let stop = CancellationToken::new();
        // In `Mode::Drop` the machine never answers `Signal`: one token serves both (and a
        // crossing costs one token node, not two).
        let signal = match machine.mode() {
            Mode::Drop => stop.clone(),
            Mode::Cooperative => stop.child_token(),
        };
        Shared {
            machine: Mutex::new(machine),
            stop,
            signal,
            producer_done: AtomicBool::new(false),
        }
    }

    /// Runtime thread: the Rust future is gone (finished, or dropped by a stop).
    pub(crate) fn producer_done(&self) {
        self.producer_done.store(true, Ordering::Release);
    }

    fn machine(&self) -> MutexGuard<'_, Crossing> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fires when the producer must be dropped now.
    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Fires when the producer is told to stop (cooperatively or not). Read by tokio's
    /// cooperative crossings only.
    #[cfg(feature = "tokio-runtime")]
    pub(crate) fn signal_token(&self) -> &CancellationToken {
        &self.signal
    }

    pub(crate) fn phase(&self) -> Phase {
        self.machine().phase()
    }

    /// Feeds `event` in and fires the tokens the machine's answer calls for.
    pub(crate) fn on(&self, event: Event) -> Action {
        let action = self.machine().on(event);
        self.carry_out(action)
    }

    /// The consumer cancelled, with Python's message. The reason is recorded before a token
    /// fires, so whoever wakes on it reads it (the token's own lock orders the two). Returns
    /// the action and whether the crossing is still live afterwards (for `Future.cancel`'s
    /// return value).
    pub(crate) fn cancel(&self, reason: Option<String>) -> (Action, bool) {
        let (action, live) = {
            let mut machine = self.machine();
            let action = machine.cancel(reason);
            (action, !matches!(machine.phase(), Phase::Ended(_)))
        };
        (self.carry_out(action), live)
    }

    fn carry_out(&self, action: Action) -> Action {
        match action {
            Action::Stop => self.stop.cancel(),
            Action::Signal => self.signal.cancel(),
            _ => {}
        }
        action
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.machine().reason().map(str::to_owned)
    }
}

impl crate::live::LiveCrossing for Shared {
    /// L1: the token fires (the Rust future is dropped on its runtime thread); nothing is
    /// delivered to the closed loop's future.
    fn loop_closed(&self, _py: Python<'_>) {
        let _ = self.on(Event::LoopClosed);
    }

    /// L2: the Rust future is stopped now; if its loop still runs, the future ends cancelled
    /// with [`EXIT_CANCEL_MESSAGE`] once the runtime thread reports it gone.
    fn exiting(&self) -> bool {
        if !self.producer_running() {
            // The outcome is computed (it may wait in the queue): nothing to stop, and a loop
            // run again by a later `atexit` handler still gets it.
            return false;
        }
        let action = self.machine().shutdown(EXIT_CANCEL_MESSAGE);
        self.carry_out(action) == Action::Stop
    }

    fn producer_running(&self) -> bool {
        !self.producer_done.load(Ordering::Acquire)
    }
}

/// Whether `err` is a cancellation: an `asyncio.CancelledError` (C5). An ordinary exception is
/// not, and neither is a `TimeoutError`.
///
/// A [`PyFuture`](crate::PyFuture) whose task was cancelled, or raised `CancelledError` itself,
/// resolves to such an error. A Rust future that returns it to a Python awaiter (for example
/// with `?`) ends that awaiter's future cancelled rather than failed.
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// async fn call(awaitable: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
///     let fut = Python::attach(|py| pyo3_async_bridge::tokio::into_future(awaitable.into_bound(py)))?;
///     match fut.await {
///         Ok(v) => Ok(Some(v)),
///         Err(e) if Python::attach(|py| pyo3_async_bridge::is_cancellation(py, &e)) => Ok(None),
///         Err(e) => Err(e),
///     }
/// }
/// ```
pub fn is_cancellation(py: Python<'_>, err: &PyErr) -> bool {
    crate::py::cancelled_error(py).is_ok_and(|t| err.is_instance(py, t))
}

/// The message a `CancelledError` carries (`cancel(msg)`), as a string (`str(msg)`, as the
/// cooperative future records it too), if it has one.
pub(crate) fn cancel_message(py: Python<'_>, err: &PyErr) -> Option<String> {
    let args = err.value(py).getattr(pyo3::intern!(py, "args")).ok()?;
    let msg = args.get_item(0).ok().filter(|m| !m.is_none())?;
    Some(msg.str().ok()?.to_string_lossy().into_owned())
}
