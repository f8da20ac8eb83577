//! Python cancels, Rust stops (C3), cancellation as a typed outcome (C5), cooperative mode.
//!
//! The crossings here report to a [`Probe`]: how many Rust futures started, finished and were
//! dropped, and, for each drop, on which thread it ran and what the crossing's scope showed
//! there (token, reason). Destructors only record into Rust data, never attach to Python.
//! Python waits for a count with `probe.wait(what, n)`, itself a crossing, bounded by the test.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_async_bridge::tokio::{
    cancellation_reason, cancellation_token, future_into_py, future_into_py_with_options,
    get_runtime, into_future, spawn,
};
use pyo3_async_bridge::{is_cancellation, CancelMode, IntoPyOptions};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;
use tokio::sync::watch;

/// What a destructor saw, recorded without attaching.
#[derive(Clone, Debug)]
struct DropRecord {
    /// The dropping thread's name (runtime workers are `pyo3-async-bridge-worker`).
    thread: Option<String>,
    /// Whether the drop ran on the thread that made the probe (the loop thread).
    on_loop_thread: bool,
    /// `cancellation_token()` inside the drop: `None` outside a crossing, else whether it fired.
    token: Option<bool>,
    /// `cancellation_reason()` inside the drop.
    reason: Option<String>,
}

/// The counts a probe keeps; Python waits on them through the watch channel.
#[derive(Default)]
struct Counts {
    started: u64,
    finished: u64,
    dropped: u64,
    released: bool,
    notes: Vec<String>,
    drops: Vec<DropRecord>,
}

/// Whether the crossing's token (captured when the work started) has fired.
type TokenCheck = Box<dyn Fn() -> bool + Send + Sync>;

struct ProbeInner {
    counts: watch::Sender<Counts>,
    /// The thread that made the probe: the test's loop thread.
    creator: ThreadId,
    token: Mutex<Option<TokenCheck>>,
}

impl ProbeInner {
    fn update(&self, f: impl FnOnce(&mut Counts)) {
        self.counts.send_modify(f);
    }

    /// Runtime thread, as the work starts: counts it and keeps a handle on the current token.
    fn start(&self) {
        if let Some(token) = cancellation_token() {
            let check: TokenCheck = Box::new(move || token.is_cancelled());
            *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(check);
        }
        self.update(|c| c.started += 1);
    }

    fn note(&self, note: String) {
        self.update(|c| c.notes.push(note));
    }

    /// Waits until Python calls `release()`.
    async fn released(&self) {
        let mut rx = self.counts.subscribe();
        let _ = rx.wait_for(|c| c.released).await;
    }
}

/// Records a test's Rust futures: starts, finishes, drops (with what each drop saw) and notes.
#[pyclass(frozen, module = "bridge_pytests")]
struct Probe {
    inner: Arc<ProbeInner>,
}

/// Counts its drop in its probe, with the thread and the crossing's scope it ran in.
struct DropGuard(Arc<ProbeInner>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let me = std::thread::current();
        let record = DropRecord {
            thread: me.name().map(str::to_owned),
            on_loop_thread: me.id() == self.0.creator,
            token: cancellation_token().map(|t| t.is_cancelled()),
            reason: cancellation_reason(),
        };
        self.0.update(|c| {
            c.dropped += 1;
            c.drops.push(record);
        });
    }
}

#[pymethods]
impl Probe {
    #[new]
    fn new() -> Self {
        Probe {
            inner: Arc::new(ProbeInner {
                counts: watch::Sender::new(Counts::default()),
                creator: std::thread::current().id(),
                token: Mutex::new(None),
            }),
        }
    }

    /// Lets gated work go on (`probe_work` without `secs`, children, cooperative cleanup).
    fn release(&self) {
        self.inner.update(|c| c.released = true);
    }

    #[getter]
    fn started(&self) -> u64 {
        self.inner.counts.borrow().started
    }

    #[getter]
    fn finished(&self) -> u64 {
        self.inner.counts.borrow().finished
    }

    #[getter]
    fn dropped(&self) -> u64 {
        self.inner.counts.borrow().dropped
    }

    #[getter]
    fn notes(&self) -> Vec<String> {
        self.inner.counts.borrow().notes.clone()
    }

    /// Whether the token of the crossing the work started in has fired (`None`: no work yet).
    fn token_fired(&self) -> Option<bool> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|check| check())
    }

    /// One dict per drop: `thread`, `on_loop_thread`, `token`, `reason`.
    fn drops<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let drops = self.inner.counts.borrow().drops.clone();
        drops
            .into_iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("thread", r.thread)?;
                d.set_item("on_loop_thread", r.on_loop_thread)?;
                d.set_item("token", r.token)?;
                d.set_item("reason", r.reason)?;
                Ok(d)
            })
            .collect()
    }

    /// Resolves once the count `what` ("started", "finished", "dropped", "notes") reaches `n`.
    #[pyo3(signature = (what, n=1))]
    fn wait<'py>(&self, py: Python<'py>, what: &str, n: u64) -> PyResult<Bound<'py, PyAny>> {
        let pick: fn(&Counts) -> u64 = match what {
            "started" => |c| c.started,
            "finished" => |c| c.finished,
            "dropped" => |c| c.dropped,
            "notes" => |c| c.notes.len() as u64,
            other => return Err(PyValueError::new_err(format!("no count {other:?}"))),
        };
        let mut rx = self.inner.counts.subscribe();
        future_into_py(py, async move {
            let _ = rx.wait_for(|c| pick(c) >= n).await;
            Ok(())
        })
    }
}

/// Default-mode crossing reporting to `probe`: starts, sleeps `secs` (or, without `secs`,
/// waits for `probe.release()`), finishes, and returns `value` or fails with `ValueError(fail)`.
#[pyfunction]
#[pyo3(signature = (probe, value=None, secs=None, fail=None))]
fn probe_work<'py>(
    py: Python<'py>,
    probe: &Bound<'py, Probe>,
    value: Option<Py<PyAny>>,
    secs: Option<f64>,
    fail: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let inner = Arc::clone(&probe.get().inner);
    future_into_py(py, async move {
        let _guard = DropGuard(Arc::clone(&inner));
        inner.start();
        match secs {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
            None => inner.released().await,
        }
        inner.update(|c| c.finished += 1);
        match fail {
            Some(msg) => Err(PyValueError::new_err(msg)),
            None => Ok(value),
        }
    })
}

/// A crossing that spawns a child with the bridge's `spawn` (which carries the crossing's
/// token) and returns at once, or, with `parent`, holds until `parent.release()`.
///
/// The child reports to `child`: it starts, waits for `child.release()`, notes whether its
/// token had fired (`"token_fired:<bool>"`) and finishes. A plain runtime task awaits the
/// child's `JoinHandle` and notes `"join:some"` (it finished) or `"join:none"` (cancelled).
#[pyfunction]
#[pyo3(signature = (child, parent=None))]
fn spawn_child<'py>(
    py: Python<'py>,
    child: &Bound<'py, Probe>,
    parent: Option<Bound<'py, Probe>>,
) -> PyResult<Bound<'py, PyAny>> {
    let child = Arc::clone(&child.get().inner);
    let parent = parent.map(|p| Arc::clone(&p.get().inner));
    future_into_py(py, async move {
        let _guard = parent.as_ref().map(|p| DropGuard(Arc::clone(p)));
        let inner = Arc::clone(&child);
        let handle = spawn(async move {
            let _guard = DropGuard(Arc::clone(&inner));
            inner.start();
            inner.released().await;
            let fired = cancellation_token().is_some_and(|t| t.is_cancelled());
            inner.note(format!("token_fired:{fired}"));
            inner.update(|c| c.finished += 1);
        });
        get_runtime().spawn(async move {
            let note = match handle.await {
                Ok(Some(())) => "join:some",
                Ok(None) => "join:none",
                Err(_) => "join:error",
            };
            child.note(note.to_owned());
        });
        if let Some(parent) = parent {
            parent.start();
            parent.released().await;
            parent.update(|c| c.finished += 1);
        }
        Ok("spawned")
    })
}

/// Cooperative crossing: waits for the token, then cleans up for `cleanup_secs` and returns
/// `value`; `events` (a list) gets "cancelled:<reason>" and "cleaned".
#[pyfunction]
#[pyo3(signature = (events, cleanup_secs, value, grace=None))]
fn cooperative_wait(
    py: Python<'_>,
    events: Py<PyAny>,
    cleanup_secs: f64,
    value: Py<PyAny>,
    grace: Option<f64>,
) -> PyResult<Bound<'_, PyAny>> {
    let options = IntoPyOptions::new().cancel_mode(CancelMode::Cooperative {
        grace: grace.map(Duration::from_secs_f64),
    });
    future_into_py_with_options(py, options, async move {
        let token = cancellation_token().expect("inside a crossing");
        token.cancelled().await;
        let reason = cancellation_reason().unwrap_or_default();
        Python::attach(|py| {
            events
                .bind(py)
                .call_method1("append", (format!("cancelled:{reason}"),))
                .map(drop)
        })?;
        tokio::time::sleep(Duration::from_secs_f64(cleanup_secs)).await;
        Python::attach(|py| {
            events
                .bind(py)
                .call_method1("append", ("cleaned",))
                .map(drop)
        })?;
        Ok(value)
    })
}

/// Cooperative crossing reporting to `probe`. With `wait_token=False` it returns `value` at
/// once. Otherwise it waits for the token, notes `"cancelled:<reason>"`, and then either never
/// finishes (`stuck`, for the grace period) or waits for `probe.release()`, notes `"cleaned"`,
/// and returns `value` or fails with `ValueError(fail)`.
#[pyfunction]
#[pyo3(signature = (probe, value=None, grace=None, wait_token=true, stuck=false, fail=None))]
fn cooperative_probe<'py>(
    py: Python<'py>,
    probe: &Bound<'py, Probe>,
    value: Option<Py<PyAny>>,
    grace: Option<f64>,
    wait_token: bool,
    stuck: bool,
    fail: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let inner = Arc::clone(&probe.get().inner);
    let options = IntoPyOptions::new().cancel_mode(CancelMode::Cooperative {
        grace: grace.map(Duration::from_secs_f64),
    });
    future_into_py_with_options(py, options, async move {
        let _guard = DropGuard(Arc::clone(&inner));
        inner.start();
        if wait_token {
            cancellation_token()
                .expect("inside a crossing")
                .cancelled()
                .await;
            let reason = cancellation_reason().unwrap_or_else(|| "<none>".to_owned());
            inner.note(format!("cancelled:{reason}"));
            if stuck {
                std::future::pending::<()>().await;
            }
            inner.released().await;
            inner.note("cleaned".to_owned());
        }
        inner.update(|c| c.finished += 1);
        match fail {
            Some(msg) => Err(PyValueError::new_err(msg)),
            None => Ok(value),
        }
    })
}

/// Fails with `asyncio.CancelledError(msg)` made by PyO3, without any Python task (C5).
#[pyfunction]
fn return_cancelled(py: Python<'_>, msg: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        Err::<(), _>(pyo3::exceptions::asyncio::CancelledError::new_err(msg))
    })
}

/// Awaits `awaitable` through `into_future` and passes its error on with `?` (C5).
#[pyfunction]
fn await_with_question_mark(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let fut = Python::attach(|py| into_future(awaitable.into_bound(py)))?;
        let value = fut.await?;
        Ok(value)
    })
}

/// Awaits `awaitable` through `into_future`: `None` when it succeeds, else whether its error
/// `is_cancellation` (C5).
#[pyfunction]
fn is_cancellation_of(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let fut = Python::attach(|py| into_future(awaitable.into_bound(py)))?;
        let result = fut.await;
        Ok(result
            .err()
            .map(|e| Python::attach(|py| is_cancellation(py, &e))))
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // DROP_CANCEL_MESSAGE is exported by `drop.rs`.
    m.add_class::<Probe>()?;
    m.add_function(wrap_pyfunction!(probe_work, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_child, m)?)?;
    m.add_function(wrap_pyfunction!(cooperative_wait, m)?)?;
    m.add_function(wrap_pyfunction!(cooperative_probe, m)?)?;
    m.add_function(wrap_pyfunction!(return_cancelled, m)?)?;
    m.add_function(wrap_pyfunction!(await_with_question_mark, m)?)?;
    m.add_function(wrap_pyfunction!(is_cancellation_of, m)?)?;
    Ok(())
}
