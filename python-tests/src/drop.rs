//! Rust drops, Python stops (C4), cancellation as an outcome seen from Rust (C5), chains (C6),
//! and the probes of the race-regression test (C7).
//!
//! Every crossing here awaits Python from a runtime thread (`into_future` inside
//! `future_into_py`), so the awaited task is started by a job queued to the loop thread: a
//! `PyFuture` made and dropped inside one `Python::attach` is dropped before its task started.

use pyo3::exceptions::asyncio::CancelledError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{future_into_py, into_future};
use pyo3_async_bridge::{is_cancellation, PyFuture};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a Rust spin-wait for a Python-side mark may take before the crossing gives up.
const SPIN_DEADLINE: Duration = Duration::from_secs(5);

/// `into_future(awaitable)` from a runtime thread: the task starts on the loop later.
fn py_future(awaitable: Py<PyAny>) -> PyResult<PyFuture> {
    Python::attach(|py| into_future(awaitable.into_bound(py)))
}

/// A counter that can be awaited: `bump` wakes whoever waits for a value.
#[derive(Default)]
struct Count {
    n: AtomicU64,
    notify: Notify,
}

impl Count {
    fn get(&self) -> u64 {
        self.n.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.n.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once the count is at least `n`. The waiter is enabled before the check, so a
    /// `bump` between the check and the await still wakes it.
    async fn at_least(&self, n: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get() >= n {
                return;
            }
            notified.await;
        }
    }
}

/// Counts Rust futures dropped (`counted` crossings bump it when their future is dropped,
/// whether it completed or not). `await counter.wait_for(n)` resolves once `n` were dropped.
#[pyclass(frozen)]
#[derive(Default)]
struct RustDrops {
    count: Arc<Count>,
}

#[pymethods]
impl RustDrops {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// How many futures were dropped so far.
    #[getter]
    fn value(&self) -> u64 {
        self.count.get()
    }

    /// An awaitable that resolves once at least `n` futures were dropped.
    fn wait_for<'py>(&self, py: Python<'py>, n: u64) -> PyResult<Bound<'py, PyAny>> {
        let count = Arc::clone(&self.count);
        future_into_py(py, async move {
            count.at_least(n).await;
            Ok(count.get())
        })
    }
}

/// Bumps a [`Count`] when dropped.
struct BumpOnDrop(Arc<Count>);

impl Drop for BumpOnDrop {
    fn drop(&mut self) {
        self.0.bump();
    }
}

fn guard(drops: &RustDrops) -> BumpOnDrop {
    BumpOnDrop(Arc::clone(&drops.count))
}

/// Rust layer of a chain (C6) and C4 (c): awaits `awaitable` and returns its outcome (`?`
/// carries a `CancelledError` out, which ends this crossing cancelled, C5). Its future's drop
/// is counted in `drops`.
#[pyfunction]
fn await_counted<'py>(
    py: Python<'py>,
    awaitable: Py<PyAny>,
    drops: &RustDrops,
) -> PyResult<Bound<'py, PyAny>> {
    let guard = guard(drops);
    future_into_py(py, async move {
        let _guard = guard;
        py_future(awaitable)?.await
    })
}

/// Innermost Rust layer of a chain (C6): never finishes; its drop is counted in `drops`.
#[pyfunction]
fn pending_counted<'py>(py: Python<'py>, drops: &RustDrops) -> PyResult<Bound<'py, PyAny>> {
    let guard = guard(drops);
    future_into_py(py, async move {
        let _guard = guard;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Innermost Rust layer that returns `CancelledError(msg)` (C5, C6).
#[pyfunction]
fn raise_cancelled(py: Python<'_>, msg: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(
        py,
        async move { Err::<(), _>(CancelledError::new_err(msg)) },
    )
}

/// C4 (a): starts `awaitable`, waits for `started` (so the task surely runs), then awaits the
/// task under `tokio::time::timeout(secs)`. Returns `(True, None)` when the timeout dropped
/// the `PyFuture`, `(False, value)` otherwise.
#[pyfunction]
fn await_with_timeout<'py>(
    py: Python<'py>,
    awaitable: Py<PyAny>,
    started: Py<PyAny>,
    secs: f64,
) -> PyResult<Bound<'py, PyAny>> {
    future_into_py(py, async move {
        let fut = py_future(awaitable)?;
        py_future(started)?.await?;
        match tokio::time::timeout(Duration::from_secs_f64(secs), fut).await {
            Ok(value) => Ok((false, Some(value?))),
            Err(_elapsed) => Ok((true, None)),
        }
    })
}

/// C4 (b): `select!` over two awaitables; returns `(index, value)` of the winner. The loser's
/// `PyFuture` is dropped by `select!`.
#[pyfunction]
fn select_first<'py>(
    py: Python<'py>,
    first: Py<PyAny>,
    second: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    future_into_py(py, async move {
        let first = py_future(first)?;
        let second = py_future(second)?;
        tokio::select! {
            value = first => Ok((0, value?)),
            value = second => Ok((1, value?)),
        }
    })
}

/// C4 (d): starts `awaitable`, awaits `started` through another `PyFuture`, then drops the
/// first one without ever having polled it.
#[pyfunction]
fn drop_unpolled<'py>(
    py: Python<'py>,
    awaitable: Py<PyAny>,
    started: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    future_into_py(py, async move {
        let fut = py_future(awaitable)?;
        py_future(started)?.await?;
        drop(fut);
        Ok(())
    })
}

/// C4 (e): makes the `PyFuture` and drops it inside the same attach, so the loop thread cannot
/// have run the job that starts its task.
#[pyfunction]
fn drop_before_start(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        Python::attach(|py| {
            let fut = into_future(awaitable.into_bound(py))?;
            drop(fut);
            Ok(())
        })
    })
}

/// C4 `detach()`: starts `awaitable`, optionally awaits `started` first, then detaches the
/// `PyFuture` and returns at once.
#[pyfunction]
#[pyo3(signature = (awaitable, started=None))]
fn detach_py<'py>(
    py: Python<'py>,
    awaitable: Py<PyAny>,
    started: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    future_into_py(py, async move {
        let fut = py_future(awaitable)?;
        if let Some(started) = started {
            py_future(started)?.await?;
        }
        fut.detach();
        Ok(())
    })
}

/// C5: awaits `awaitable` and reports its outcome as seen from Rust:
/// `("ok", False, None, value)` or `(exception type name, is_cancellation, args[0] as str or
/// None, None)`.
#[pyfunction]
fn await_classify(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    type Report = (String, bool, Option<String>, Option<Py<PyAny>>);
    future_into_py(py, async move {
        let result = py_future(awaitable)?.await;
        Python::attach(|py| -> PyResult<Report> {
            match result {
                Ok(value) => Ok(("ok".to_owned(), false, None, Some(value))),
                Err(err) => {
                    let name = err.get_type(py).name()?.to_string();
                    let message = err
                        .value(py)
                        .getattr("args")?
                        .get_item(0)
                        .ok()
                        .and_then(|m| m.extract::<String>().ok());
                    Ok((name, is_cancellation(py, &err), message, None))
                }
            }
        })
    })
}

// --- C7 race probes: Python cancels Rust -------------------------------------------------

#[derive(Default)]
struct WorkState {
    polled: AtomicBool,
    completed: AtomicBool,
    dropped_incomplete: AtomicU64,
    drops: Count,
}

/// What a `race_work` crossing's Rust future has done: `polled` (first poll), `completed`
/// (set right before it returns its value), `drops` (its future was dropped, after completing
/// or not), `dropped_incomplete` (dropped before completing).
#[pyclass(frozen)]
#[derive(Default)]
struct WorkProbe {
    state: Arc<WorkState>,
}

#[pymethods]
impl WorkProbe {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    #[getter]
    fn polled(&self) -> bool {
        self.state.polled.load(Ordering::SeqCst)
    }

    #[getter]
    fn completed(&self) -> bool {
        self.state.completed.load(Ordering::SeqCst)
    }

    #[getter]
    fn drops(&self) -> u64 {
        self.state.drops.get()
    }

    #[getter]
    fn dropped_incomplete(&self) -> u64 {
        self.state.dropped_incomplete.load(Ordering::SeqCst)
    }

    /// An awaitable that resolves once the probed future was dropped.
    fn wait_dropped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        future_into_py(py, async move {
            state.drops.at_least(1).await;
            Ok(())
        })
    }
}

/// Records the drop of the probed future.
struct WorkGuard(Arc<WorkState>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if !self.0.completed.load(Ordering::SeqCst) {
            self.0.dropped_incomplete.fetch_add(1, Ordering::SeqCst);
        }
        self.0.drops.bump();
    }
}

/// A crossing whose Rust future marks `probe.polled` on its first poll, yields `yields` times,
/// sleeps `sleep_us` microseconds (if not 0), marks `probe.completed` and returns `value`.
#[pyfunction]
fn race_work<'py>(
    py: Python<'py>,
    probe: &WorkProbe,
    yields: u32,
    sleep_us: u64,
    value: i64,
) -> PyResult<Bound<'py, PyAny>> {
    let guard = WorkGuard(Arc::clone(&probe.state));
    future_into_py(py, async move {
        let guard = guard;
        guard.0.polled.store(true, Ordering::SeqCst);
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        if sleep_us > 0 {
            tokio::time::sleep(Duration::from_micros(sleep_us)).await;
        }
        guard.0.completed.store(true, Ordering::SeqCst);
        Ok(value)
    })
}

/// Blocks every worker thread of the bridge's runtime until released (or dropped), so that a
/// crossing made meanwhile cannot be polled: the "cancelled before the first poll" window.
#[pyclass(frozen)]
struct WorkerHold {
    gate: Arc<(Mutex<bool>, Condvar)>,
    running: Arc<AtomicUsize>,
    workers: usize,
}

#[pymethods]
impl WorkerHold {
    /// Spawns one blocking task per worker thread; each waits on the gate.
    #[new]
    fn new() -> Self {
        let runtime = pyo3_async_bridge::tokio::get_runtime();
        let workers = runtime.metrics().num_workers();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let running = Arc::new(AtomicUsize::new(0));
        for _ in 0..workers {
            let gate = Arc::clone(&gate);
            let running = Arc::clone(&running);
            runtime.spawn(async move {
                running.fetch_add(1, Ordering::SeqCst);
                let (released, cv) = &*gate;
                let mut released = released.lock().unwrap_or_else(PoisonError::into_inner);
                while !*released {
                    released = cv.wait(released).unwrap_or_else(PoisonError::into_inner);
                }
            });
        }
        WorkerHold {
            gate,
            running,
            workers,
        }
    }

    /// Whether every worker thread is held now.
    fn all_held(&self) -> bool {
        self.running.load(Ordering::SeqCst) == self.workers
    }

    /// Lets the workers go.
    fn release(&self) {
        let (released, cv) = &*self.gate;
        *released.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
    }
}

impl Drop for WorkerHold {
    fn drop(&mut self) {
        self.release();
    }
}

// --- C7 race probes: Rust drops Python -----------------------------------------------------

#[derive(Default)]
struct CoroState {
    started: AtomicBool,
    finished: AtomicBool,
    dropped: AtomicBool,
}

/// Marks set by a Python coroutine: `mark_started()` first thing, `mark_finished()` right
/// before it returns; read from Rust when the `PyFuture` is dropped. `dropped` is set by Rust
/// right after it dropped the `PyFuture` (a coroutine may hold the loop until then).
#[pyclass(frozen)]
#[derive(Default)]
struct CoroProbe {
    state: Arc<CoroState>,
}

#[pymethods]
impl CoroProbe {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn mark_started(&self) {
        self.state.started.store(true, Ordering::SeqCst);
    }

    fn mark_finished(&self) {
        self.state.finished.store(true, Ordering::SeqCst);
    }

    #[getter]
    fn started(&self) -> bool {
        self.state.started.load(Ordering::SeqCst)
    }

    #[getter]
    fn finished(&self) -> bool {
        self.state.finished.load(Ordering::SeqCst)
    }

    #[getter]
    fn dropped(&self) -> bool {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

/// Busy-waits (no await, no attach) until `done()` or `SPIN_DEADLINE`; false on the deadline.
fn spin_until(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + SPIN_DEADLINE;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::hint::spin_loop();
    }
    true
}

fn spin_for(micros: u64) {
    let end = Instant::now() + Duration::from_micros(micros);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Polls `fut` once: `Some(outcome)` when it is ready.
async fn poll_once(fut: &mut PyFuture) -> Option<PyResult<Py<PyAny>>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    })
    .await
}

/// The race of Rust dropping a `PyFuture` against its coroutine (C4, C7). `mode`:
/// `"at_once"` drops it inside the attach that made it (before the task started);
/// `"started"` / `"finished"` busy-wait (no await, not attached) for the probe's mark, then
/// `spin_us` more; `"spin"` busy-waits `spin_us` only. Then, with `poll`, the `PyFuture` is
/// polled once: if it is ready, returns `("received", value)`. Otherwise it is dropped and the
/// window is read from the probe right before: `("before_start" | "running" | "after_finish",
/// None)`; `probe.dropped` is set after the drop. `("deadline", None)` when a mark never came.
#[pyfunction]
fn drop_race<'py>(
    py: Python<'py>,
    coro: Py<PyAny>,
    probe: &CoroProbe,
    mode: String,
    spin_us: u64,
    poll: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let state = Arc::clone(&probe.state);
    future_into_py(py, async move {
        let window = |s: &CoroState| match (
            s.started.load(Ordering::SeqCst),
            s.finished.load(Ordering::SeqCst),
        ) {
            (false, _) => "before_start",
            (true, false) => "running",
            (true, true) => "after_finish",
        };
        if mode == "at_once" {
            let window = Python::attach(|py| {
                let fut = into_future(coro.into_bound(py))?;
                let window = window(&state);
                drop(fut);
                PyResult::Ok(window)
            })?;
            state.dropped.store(true, Ordering::SeqCst);
            return Ok((window.to_owned(), None));
        }
        let mut fut = py_future(coro)?;
        let reached = match mode.as_str() {
            "started" => spin_until(|| state.started.load(Ordering::SeqCst)),
            "finished" => spin_until(|| state.finished.load(Ordering::SeqCst)),
            "spin" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown drop_race mode {other:?}"
                )))
            }
        };
        if !reached {
            return Ok(("deadline".to_owned(), None));
        }
        spin_for(spin_us);
        if poll {
            if let Some(outcome) = poll_once(&mut fut).await {
                return Ok(("received".to_owned(), Some(outcome?)));
            }
        }
        let window = window(&state);
        drop(fut);
        state.dropped.store(true, Ordering::SeqCst);
        Ok((window.to_owned(), None))
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add(
        "DROP_CANCEL_MESSAGE",
        pyo3_async_bridge::DROP_CANCEL_MESSAGE,
    )?;
    m.add_class::<RustDrops>()?;
    m.add_class::<WorkProbe>()?;
    m.add_class::<CoroProbe>()?;
    m.add_class::<WorkerHold>()?;
    m.add_function(wrap_pyfunction!(await_counted, m)?)?;
    m.add_function(wrap_pyfunction!(pending_counted, m)?)?;
    m.add_function(wrap_pyfunction!(raise_cancelled, m)?)?;
    m.add_function(wrap_pyfunction!(await_with_timeout, m)?)?;
    m.add_function(wrap_pyfunction!(select_first, m)?)?;
    m.add_function(wrap_pyfunction!(drop_unpolled, m)?)?;
    m.add_function(wrap_pyfunction!(drop_before_start, m)?)?;
    m.add_function(wrap_pyfunction!(detach_py, m)?)?;
    m.add_function(wrap_pyfunction!(await_classify, m)?)?;
    m.add_function(wrap_pyfunction!(race_work, m)?)?;
    m.add_function(wrap_pyfunction!(drop_race, m)?)?;
    Ok(())
}
