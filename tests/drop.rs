//! Rules C4 and C5 from Rust's side.
//!
//! C4, Rust drops, Python stops: a `PyFuture` dropped before it completes (by
//! `tokio::time::timeout`, as the loser of `tokio::select!`, never polled, or with the crossing
//! that awaits it cancelled) cancels its Python task with `DROP_CANCEL_MESSAGE`, and the task's
//! `except CancelledError` and `finally` run. A coroutine whose task never started (the
//! `PyFuture` was dropped on a runtime thread first) is closed, without a "never awaited"
//! warning; a task handed over that way is cancelled. `PyFuture::detach` lets the task run on.
//!
//! C5: a `PyFuture` whose task was cancelled or raised `CancelledError` resolves to an error for
//! which `is_cancellation` is true; a `ValueError` or a `TimeoutError` is not a cancellation.

mod common;

use common::{
    crossing, in_running_loop, load_module, locals_for, notified, run_bounded, wait_signal,
    with_loop, Attached, Signal,
};
use pyo3::exceptions::asyncio::CancelledError;
use pyo3::exceptions::PyAssertionError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};
use pyo3_async_bridge::tokio::{get_runtime, into_future};
use pyo3_async_bridge::{into_future_with_locals, is_cancellation, DROP_CANCEL_MESSAGE};
use std::time::Duration;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio, gc, inspect, warnings

class Record:
    """What a `guarded` coroutine went through."""
    def __init__(self):
        self.started = False
        self.completed = False
        self.cancel_args = None
        self.finally_ran = False
        self.finished = asyncio.Event()

    def seen(self):
        return self.started, self.completed, self.cancel_args, self.finally_ran

async def guarded(rec, started, release=None, fail=False):
    """Signals `started`, then waits for `release` (forever without one) and returns, or
    raises ValueError with `fail`; records a cancellation and its finally."""
    rec.started = True
    started()
    try:
        if release is None:
            await asyncio.get_running_loop().create_future()
        else:
            await release.wait()
        if fail:
            raise ValueError("failed after release")
        rec.completed = True
        return "completed"
    except asyncio.CancelledError as e:
        rec.cancel_args = e.args
        raise
    finally:
        rec.finally_ran = True
        rec.finished.set()

async def finished(rec):
    await rec.finished.wait()
    return rec.seen()

def coroutine_state(coro):
    return inspect.getcoroutinestate(coro), coro.cr_frame is None

def drop_and_collect(holder, key):
    """Drops holder[key], collects garbage, and returns the warnings that were emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del holder[key]
        gc.collect()
    return [f"{w.category.__name__}: {w.message}" for w in caught]

async def yield_once():
    await asyncio.sleep(0)

async def forever():
    await asyncio.get_running_loop().create_future()

async def cancel_soon(task, msg):
    await asyncio.sleep(0)
    task.cancel(msg)

async def cancels_itself(msg):
    asyncio.current_task().cancel(msg)
    await asyncio.sleep(0)

async def raises(exc):
    await asyncio.sleep(0)
    raise exc

async def wait_for_times_out():
    await asyncio.wait_for(forever(), 0.001)

async def timeout_block_times_out():
    async with asyncio.timeout(0):
        await forever()
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_drop")
}

/// `(started, completed, cancel_args, finally_ran)` of a `Record`.
type Seen = (bool, bool, Option<Vec<String>>, bool);

/// A `guarded(rec, started, release, fail)` coroutine with a fresh record, and the Rust side of
/// its `started` signal.
fn guarded<'py>(
    py: Python<'py>,
    release: Option<&Bound<'py, PyAny>>,
    fail: bool,
) -> PyResult<(
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    std::sync::Arc<tokio::sync::Notify>,
)> {
    let rec = helpers(py).getattr("Record")?.call0()?;
    let (signal, started) = Signal::pair(py)?;
    let coro = helpers(py).call_method1("guarded", (&rec, signal, release, fail))?;
    Ok((rec, coro, started))
}

/// Runs the loop until the coroutine's `finally` ran, and returns what it went through.
fn finished(event_loop: &Bound<'_, PyAny>, rec: &Bound<'_, PyAny>) -> PyResult<Seen> {
    let waiter = helpers(event_loop.py()).call_method1("finished", (rec,))?;
    run_bounded(event_loop, &waiter)?.extract()
}

/// The record of a task cancelled by its `PyFuture`'s drop after it started (C4).
fn assert_cancelled_by_drop(seen: Seen) {
    assert_eq!(
        seen,
        (
            true,
            false,
            Some(vec![DROP_CANCEL_MESSAGE.to_owned()]),
            true
        ),
        "(started, completed, cancel args, finally ran)"
    );
}

/// Runtime thread, inside a crossing: `into_future(coro)`, then waits until it started.
async fn started_py_future(
    coro: Attached<Py<PyAny>>,
    started: &tokio::sync::Notify,
) -> PyResult<pyo3_async_bridge::PyFuture> {
    let fut = Python::attach(|py| into_future(coro.take().into_bound(py)))?;
    // The task starts on the loop thread whether or not the PyFuture is polled.
    notified(started, "the Python task never started").await?;
    Ok(fut)
}

#[test]
fn c4_timeout_drop_cancels_the_python_task() {
    with_loop(|py, event_loop| {
        let (rec, coro, started) = guarded(py, None, false)?;
        let coro = Attached::new(coro.unbind());
        let fut = crossing(event_loop, async move {
            let fut = started_py_future(coro, &started).await?;
            let elapsed = tokio::time::timeout(Duration::from_millis(1), fut).await;
            Ok(elapsed.is_err())
        })?;
        assert!(
            run_bounded(event_loop, &fut)?.extract::<bool>()?,
            "no timeout"
        );
        assert_cancelled_by_drop(finished(event_loop, &rec)?);
        Ok(())
    });
}

#[test]
fn c4_select_loser_drop_cancels_the_python_task() {
    with_loop(|py, event_loop| {
        let (rec, coro, started) = guarded(py, None, false)?;
        let coro = Attached::new(coro.unbind());
        let fut = crossing(event_loop, async move {
            let fut = Python::attach(|py| into_future(coro.take().into_bound(py)))?;
            tokio::select! {
                biased;
                // Polled first, so it is a PyFuture being awaited when it loses.
                outcome = fut => Python::attach(|py| {
                    Err(PyAssertionError::new_err(format!(
                        "the PyFuture won with {:?}", outcome.map(|v| v.bind(py).to_string())
                    )))
                }),
                started = notified(&started, "the Python task never started") => started,
            }
        })?;
        run_bounded(event_loop, &fut)?;
        assert_cancelled_by_drop(finished(event_loop, &rec)?);
        Ok(())
    });
}

#[test]
fn c4_never_polled_py_future_dropped_after_start_cancels_the_python_task() {
    with_loop(|py, event_loop| {
        let (rec, coro, started) = guarded(py, None, false)?;
        let coro = Attached::new(coro.unbind());
        let fut = crossing(event_loop, async move {
            let fut = started_py_future(coro, &started).await?;
            // Runtime thread, not attached.
            drop(fut);
            Ok(())
        })?;
        run_bounded(event_loop, &fut)?;
        assert_cancelled_by_drop(finished(event_loop, &rec)?);
        Ok(())
    });
}

#[test]
fn c4_cancelled_outer_crossing_cancels_the_awaited_python_task() {
    with_loop(|py, event_loop| {
        let (rec, coro, started) = guarded(py, None, false)?;
        let coro = Attached::new(coro.unbind());
        let (outer_started, outer_notify) = Signal::pair(py)?;
        let fut = crossing(event_loop, async move {
            let fut = started_py_future(coro, &started).await?;
            outer_notify.notify_one();
            fut.await
        })?;
        wait_signal(event_loop, &outer_started)?;
        assert!(fut.call_method1("cancel", ("outer stop",))?.is_truthy()?);
        let err = run_bounded(event_loop, &fut).expect_err("the outer crossing was cancelled");
        assert!(err.is_instance_of::<CancelledError>(py), "got {err}");
        assert_cancelled_by_drop(finished(event_loop, &rec)?);
        Ok(())
    });
}

#[test]
fn c4_coroutine_not_started_before_the_drop_is_closed_without_warning() {
    with_loop(|py, event_loop| {
        let (rec, coro, _started) = guarded(py, None, false)?;
        let holder = PyDict::new(py);
        holder.set_item("coro", &coro)?;
        let coro = Attached::new(coro.unbind());
        let locals = locals_for(event_loop)?;
        // The loop does not run while the runtime thread hands the coroutine over and drops the
        // PyFuture: the start request waits in the loop's queue, so the task cannot start first.
        let handover = get_runtime().spawn(async move {
            let fut = Python::attach(|py| {
                into_future_with_locals(&locals, coro.take().into_bound(py))
                    .map_err(|e| e.to_string())
            });
            let created = fut.as_ref().map(drop).map_err(Clone::clone);
            // Runtime thread, not attached.
            drop(fut);
            created
        });
        py.detach(|| get_runtime().block_on(handover))
            .expect("the handover task panicked")
            .unwrap_or_else(|e| panic!("into_future_with_locals: {e}"));
        // A crossing's outcome travels through the same queue after the start request.
        run_bounded(event_loop, &crossing(event_loop, async { Ok(()) })?)?;
        let h = helpers(py);
        let state: (String, bool) = h
            .call_method1(
                "coroutine_state",
                (holder.get_item("coro")?.expect("held"),),
            )?
            .extract()?;
        assert_eq!(
            state,
            ("CORO_CLOSED".to_owned(), true),
            "(state, cr_frame is None)"
        );
        let seen: Seen = rec.call_method0("seen")?.extract()?;
        assert_eq!(seen, (false, false, None, false), "the coroutine ran");
        let warnings: Vec<String> = h
            .call_method1("drop_and_collect", (&holder, "coro"))?
            .extract()?;
        assert!(warnings.is_empty(), "{warnings:?}");
        // The control: a coroutine that is neither awaited nor closed does warn.
        let (_rec, control, _started) = guarded(py, None, false)?;
        holder.set_item("control", control)?;
        let warnings: Vec<String> = h
            .call_method1("drop_and_collect", (&holder, "control"))?
            .extract()?;
        assert!(
            warnings.iter().any(|w| w.contains("never awaited")),
            "{warnings:?}"
        );
        Ok(())
    });
}

#[test]
fn c4_task_handed_over_and_dropped_before_start_is_cancelled() {
    with_loop(|py, event_loop| {
        let (rec, coro, _started) = guarded(py, None, false)?;
        let task = event_loop.call_method1("create_task", (coro,))?;
        // The task runs up to its first await (it was scheduled before this).
        run_bounded(event_loop, &helpers(py).call_method0("yield_once")?)?;
        let seen: Seen = rec.call_method0("seen")?.extract()?;
        assert!(seen.0, "the task did not start");
        let task_ref = Attached::new(task.clone().unbind());
        let locals = locals_for(event_loop)?;
        let handover = get_runtime().spawn(async move {
            let fut = Python::attach(|py| {
                into_future_with_locals(&locals, task_ref.take().into_bound(py))
                    .map_err(|e| e.to_string())
            });
            let created = fut.as_ref().map(drop).map_err(Clone::clone);
            drop(fut);
            created
        });
        py.detach(|| get_runtime().block_on(handover))
            .expect("the handover task panicked")
            .unwrap_or_else(|e| panic!("into_future_with_locals: {e}"));
        assert_cancelled_by_drop(finished(event_loop, &rec)?);
        assert!(task.call_method0("cancelled")?.is_truthy()?);
        Ok(())
    });
}

#[test]
fn c4_detach_lets_the_python_task_run_on() {
    with_loop(|py, event_loop| {
        let release = py.import("asyncio")?.getattr("Event")?.call0()?;
        let (rec, coro, started) = guarded(py, Some(&release), false)?;
        let coro = Attached::new(coro.unbind());
        let fut = crossing(event_loop, async move {
            started_py_future(coro, &started).await?.detach();
            Ok(())
        })?;
        run_bounded(event_loop, &fut)?;
        // Had the PyFuture cancelled its task, the cancel would have reached the loop before the
        // crossing's outcome (one queue, in order).
        release.call_method0("set")?;
        assert_eq!(finished(event_loop, &rec)?, (true, true, None, true));
        Ok(())
    });
}

#[test]
fn c4_detached_task_that_fails_reports_nothing() {
    // with_loop fails on "exception was never retrieved" and unraisable exceptions.
    with_loop(|py, event_loop| {
        let release = py.import("asyncio")?.getattr("Event")?.call0()?;
        let (rec, coro, started) = guarded(py, Some(&release), true)?;
        let coro = Attached::new(coro.unbind());
        let fut = crossing(event_loop, async move {
            started_py_future(coro, &started).await?.detach();
            Ok(())
        })?;
        run_bounded(event_loop, &fut)?;
        release.call_method0("set")?;
        assert_eq!(finished(event_loop, &rec)?, (true, false, None, true));
        py.import("gc")?.call_method0("collect")?;
        Ok(())
    });
}

/// Awaits `make(py)` from a crossing and returns `(is_cancellation, type name, args)` of the
/// error it raised.
fn error_of(
    event_loop: &Bound<'_, PyAny>,
    make: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + 'static,
) -> PyResult<(bool, String, Vec<String>)> {
    let fut = in_running_loop(event_loop, move |py| {
        let awaitable = Attached::new(make(py)?.unbind());
        pyo3_async_bridge::tokio::future_into_py(py, async move {
            let fut = Python::attach(|py| into_future(awaitable.take().into_bound(py)))?;
            let outcome = fut.await;
            Python::attach(|py| match outcome {
                Ok(v) => Err(PyAssertionError::new_err(format!(
                    "expected an error, got {}",
                    v.bind(py)
                ))),
                Err(e) => {
                    let name = e.get_type(py).name()?.to_string();
                    let args: Vec<String> = e
                        .value(py)
                        .getattr("args")?
                        .try_iter()?
                        .map(|a| a?.str().map(|s| s.to_string()))
                        .collect::<PyResult<_>>()?;
                    Ok((is_cancellation(py, &e), name, args))
                }
            })
        })
    })?;
    run_bounded(event_loop, &fut)?.extract()
}

#[test]
fn c5_task_cancelled_by_python_is_a_cancellation() {
    with_loop(|_py, event_loop| {
        let seen = error_of(event_loop, |py| {
            let h = helpers(py);
            let task = asyncio_task(py, h.call_method0("forever")?)?;
            asyncio_task(
                py,
                h.call_method1("cancel_soon", (&task, "cancelled by python"))?,
            )?;
            Ok(task)
        })?;
        assert_eq!(
            seen,
            (
                true,
                "CancelledError".to_owned(),
                vec!["cancelled by python".to_owned()]
            )
        );
        let seen = error_of(event_loop, |py| {
            helpers(py).call_method1("cancels_itself", ("cancelled itself",))
        })?;
        assert_eq!(
            seen,
            (
                true,
                "CancelledError".to_owned(),
                vec!["cancelled itself".to_owned()]
            )
        );
        Ok(())
    });
}

/// `asyncio.ensure_future(coro)` on the running loop.
fn asyncio_task<'py>(py: Python<'py>, coro: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    py.import("asyncio")?.call_method1("ensure_future", (coro,))
}

#[test]
fn c5_raised_cancelled_error_is_a_cancellation() {
    with_loop(|_py, event_loop| {
        let seen = error_of(event_loop, |py| {
            let exc = CancelledError::new_err("raised").into_value(py);
            helpers(py).call_method1("raises", (exc,))
        })?;
        assert_eq!(
            seen,
            (true, "CancelledError".to_owned(), vec!["raised".to_owned()])
        );
        Ok(())
    });
}

#[test]
fn c5_value_error_is_not_a_cancellation() {
    with_loop(|_py, event_loop| {
        let seen = error_of(event_loop, |py| {
            let exc = pyo3::exceptions::PyValueError::new_err("bad").into_value(py);
            helpers(py).call_method1("raises", (exc,))
        })?;
        assert_eq!(
            seen,
            (false, "ValueError".to_owned(), vec!["bad".to_owned()])
        );
        Ok(())
    });
}

#[test]
fn c5_timeout_error_is_not_a_cancellation() {
    with_loop(|_py, event_loop| {
        let seen = error_of(event_loop, |py| {
            let exc = pyo3::exceptions::PyTimeoutError::new_err("slow").into_value(py);
            helpers(py).call_method1("raises", (exc,))
        })?;
        assert_eq!(
            seen,
            (false, "TimeoutError".to_owned(), vec!["slow".to_owned()])
        );
        // asyncio's own timeouts cancel internally and raise TimeoutError: not a cancellation.
        for helper in ["wait_for_times_out", "timeout_block_times_out"] {
            let (cancellation, name, _) =
                error_of(event_loop, move |py| helpers(py).call_method0(helper))?;
            assert!(!cancellation, "{helper}: is_cancellation is true");
            assert_eq!(name, "TimeoutError", "{helper}");
        }
        Ok(())
    });
}

#[test]
fn c5_is_cancellation_on_errors_made_in_rust() {
    Python::attach(|py| {
        assert!(is_cancellation(py, &CancelledError::new_err("made here")));
        assert!(!is_cancellation(
            py,
            &pyo3::exceptions::PyValueError::new_err("x")
        ));
        assert!(!is_cancellation(
            py,
            &pyo3::exceptions::asyncio::TimeoutError::new_err("x")
        ));
        assert!(!is_cancellation(
            py,
            &pyo3::exceptions::PyKeyboardInterrupt::new_err(())
        ));
    });
}

const BAD_FUTURE: &std::ffi::CStr = c"
import asyncio

class NoCallbacks(asyncio.Future):
    def add_done_callback(self, *args, **kwargs):
        raise RuntimeError('no callbacks here')
";

/// An awaitable that refuses the completer (`add_done_callback` raises): the `PyFuture` gets
/// that error at once instead of hanging or reporting a vague drop (C7), and the task it held
/// is released on the loop thread: detaching it afterwards from a thread that is not attached
/// drops no Python reference there (A1; `make test-nopool` aborts if it did).
#[test]
fn c4_awaitable_refusing_the_completer_fails_the_py_future_and_releases_it_attached() {
    for detach in [false, true] {
        with_loop(|py, event_loop| {
            let module = PyModule::from_code(py, BAD_FUTURE, c"bad_future.py", c"bad_future")?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("loop", event_loop)?;
            let bad = module.getattr("NoCallbacks")?.call((), Some(&kwargs))?;
            let locals = common::locals_for(event_loop)?;
            // Not on the loop thread while it runs: the start is queued.
            let fut = into_future_with_locals(&locals, bad)?;
            let sleep = py.import("asyncio")?.call_method1("sleep", (0.01,))?;
            common::run_bounded(event_loop, &sleep)?;
            if detach {
                py.detach(|| std::thread::spawn(move || fut.detach()).join())
                    .expect("detach panicked");
            } else {
                let got = py.detach(|| get_runtime().block_on(fut));
                let err = got.expect_err("the PyFuture must fail");
                assert!(err.to_string().contains("no callbacks here"), "{err}");
            }
            Ok(())
        });
    }
}
