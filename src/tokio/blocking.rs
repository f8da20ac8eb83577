//! Sync Rust waiting for Python: [`block_on_python`] (rule R5).

use crate::err::{describe, BridgeError};
use crate::{into_future_with_locals, TaskLocals};
use pyo3::intern;
use pyo3::prelude::*;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

/// How often a main thread blocked here lets Python run its signal handlers (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Runs `awaitable` to completion on `event_loop`, an event loop running in another thread, and
/// returns its result: sync Rust's `asyncio.run_coroutine_threadsafe(aw, loop).result()`.
///
/// The calling thread blocks with the interpreter released (other threads, the loop's included,
/// run Python meanwhile). On the main thread, Python's signal handlers still run while it
/// waits: a `KeyboardInterrupt` they raise cancels the task and is returned.
///
/// Built on [`into_future_with_locals`]: the awaitable becomes a task on `event_loop` with a
/// copy of the caller's context (C8), and giving up on it (an error from a signal handler)
/// cancels that task (C4).
///
/// # Examples
/// ```
/// use pyo3::prelude::*;
///
/// Python::attach(|py| -> PyResult<()> {
///     let asyncio = py.import("asyncio")?;
///     let event_loop = asyncio.call_method0("new_event_loop")?;
///     let kwargs = pyo3::types::PyDict::new(py);
///     kwargs.set_item("target", event_loop.getattr("run_forever")?)?;
///     let runner = py.import("threading")?.getattr("Thread")?.call((), Some(&kwargs))?;
///     runner.call_method0("start")?;
///     let coro = asyncio.call_method1("sleep", (0.01, "done"))?;
///     let result = pyo3_async_bridge::tokio::block_on_python(&event_loop, coro)?;
///     assert_eq!(result.extract::<String>(py)?, "done");
///     event_loop.call_method1("call_soon_threadsafe", (event_loop.getattr("stop")?,))?;
///     runner.call_method0("join")?;
///     event_loop.call_method0("close")?;
///     Ok(())
/// })
/// .unwrap();
/// ```
///
/// # Errors
/// What the awaitable raises; `RuntimeError` when `event_loop` runs in this thread (waiting would
/// deadlock) or is closed, `TypeError` when `awaitable` is not awaitable or `event_loop` is not
/// an event loop. A coroutine that is refused is closed, never left un-awaited.
///
/// # Panics
/// Never; but it waits as long as the awaitable runs, and for ever on a loop that nobody runs.
pub fn block_on_python(
    event_loop: &Bound<'_, PyAny>,
    awaitable: Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = event_loop.py();
    if let Err(e) = check_loop(event_loop) {
        crate::task::close_unstarted(&awaitable, crate::task::is_coroutine(&awaitable));
        return Err(e);
    }
    let locals = TaskLocals::new(event_loop.clone()).copy_context(py)?;
    let fut = into_future_with_locals(&locals, awaitable)?;
    wait(py, fut)
}

/// R5: not on the loop's own thread, not on a closed loop, nothing that is no loop.
fn check_loop(event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = event_loop.py();
    if crate::py::running_loop_or_none(py)?.is(event_loop) {
        return Err(BridgeError::WouldDeadlock.into());
    }
    if !event_loop.hasattr(intern!(py, "is_closed"))? {
        return Err(BridgeError::NotALoop(describe(event_loop)).into());
    }
    if event_loop
        .call_method0(intern!(py, "is_closed"))?
        .is_truthy()?
    {
        return Err(BridgeError::LoopClosed(describe(event_loop)).into());
    }
    Ok(())
}

/// Wakes the blocked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread, detached, parking between polls.
///
/// No lost wakeup: a wake (loop thread, the task's done callback) unparks this thread; an
/// unpark that comes before the park makes the park return at once.
fn wait<F>(py: Python<'_>, fut: F) -> PyResult<Py<PyAny>>
where
    F: Future<Output = PyResult<Py<PyAny>>> + Send,
{
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    loop {
        let polled = py.detach(|| {
            let ready = fut.as_mut().poll(&mut Context::from_waker(&waker));
            if ready.is_pending() {
                std::thread::park_timeout(SIGNAL_CHECK);
            }
            ready
        });
        match polled {
            Poll::Ready(out) => return out,
            // Signal handlers get their turn (they only run on the main thread). An error
            // (KeyboardInterrupt) drops `fut` on return: its task is cancelled (C4).
            Poll::Pending => py.check_signals()?,
        }
    }
}
