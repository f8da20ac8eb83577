//! Rule C1: inside a crossing, and inside `tokio::scope`, the current `TaskLocals` are the very
//! loop and `contextvars.Context` objects that were passed, and destructors of the future see
//! them too.

mod common;

use common::{run, wait_detached, with_loop, Attached};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{
    future_into_py_with_locals, get_current_locals, get_current_loop, get_runtime, scope,
};
use pyo3_async_bridge::TaskLocals;
use std::sync::mpsc;

/// `(locals.event_loop, locals.context, get_current_loop())` as seen from the calling thread.
type Seen = (Py<PyAny>, Py<PyAny>, Py<PyAny>);

/// Runtime thread, attached: what `get_current_locals` and `get_current_loop` return right now.
fn seen_now() -> PyResult<Seen> {
    Python::attach(|py| {
        let current = get_current_locals(py)?;
        Ok((
            current.event_loop(py).unbind(),
            current.context(py).unbind(),
            get_current_loop(py)?.unbind(),
        ))
    })
}

fn assert_same(py: Python<'_>, seen: &Seen, event_loop: &Bound<'_, PyAny>, ctx: &Bound<'_, PyAny>) {
    assert!(
        seen.0.bind(py).is(event_loop),
        "get_current_locals: another loop object"
    );
    assert!(
        seen.1.bind(py).is(ctx),
        "get_current_locals: another Context object"
    );
    assert!(
        seen.2.bind(py).is(event_loop),
        "get_current_loop: another loop object"
    );
}

fn new_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("contextvars")?.call_method0("copy_context")
}

#[test]
fn c1_crossing_sees_the_passed_loop_and_context() {
    with_loop(|py, event_loop| {
        let ctx = new_context(py)?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let fut = future_into_py_with_locals(py, locals, async {
            let before = seen_now()?;
            // After a suspension the task may resume on another worker thread.
            tokio::task::yield_now().await;
            let after = seen_now()?;
            Ok((before, after))
        })?;
        let (before, after): (Seen, Seen) = run(event_loop, &fut)?.extract()?;
        assert_same(py, &before, event_loop, &ctx);
        assert_same(py, &after, event_loop, &ctx);
        Ok(())
    });
}

#[test]
fn c1_each_crossing_sees_its_own_context() {
    with_loop(|py, event_loop| {
        let contexts = (0..64)
            .map(|_| new_context(py))
            .collect::<PyResult<Vec<_>>>()?;
        let futs = contexts
            .iter()
            .map(|ctx| {
                let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
                future_into_py_with_locals(py, locals, async {
                    tokio::task::yield_now().await;
                    seen_now()
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let results = common::gather(event_loop, futs)?;
        for (result, ctx) in results.iter().zip(&contexts) {
            assert_same(py, &result.extract()?, event_loop, ctx);
        }
        Ok(())
    });
}

#[test]
fn c1_copy_context_locals_are_seen_as_passed() {
    with_loop(|py, event_loop| {
        let locals = TaskLocals::new(event_loop.clone()).copy_context(py)?;
        let ctx = locals.context(py);
        assert!(!ctx.is_none(), "copy_context must carry a Context");
        let fut = future_into_py_with_locals(py, locals, async { seen_now() })?;
        let seen: Seen = run(event_loop, &fut)?.extract()?;
        assert_same(py, &seen, event_loop, &ctx);
        Ok(())
    });
}

#[test]
fn c1_scope_makes_locals_current() {
    with_loop(|py, event_loop| {
        let ctx = new_context(py)?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let handle = get_runtime().spawn(scope(locals, async {
            tokio::task::yield_now().await;
            seen_now()
        }));
        let joined = py.detach(|| get_runtime().block_on(handle));
        let seen = joined.expect("the scoped task panicked")?;
        assert_same(py, &seen, event_loop, &ctx);
        Ok(())
    });
}

#[test]
fn c1_no_locals_outside_a_scope_on_a_runtime_thread() {
    // The control for the tests above: a plain runtime task has no locals and no running loop.
    let handle = get_runtime().spawn(async {
        Python::attach(|py| {
            let locals = get_current_locals(py).map(drop);
            let event_loop = get_current_loop(py).map(drop);
            [locals, event_loop]
                .into_iter()
                .map(|r| match r {
                    Err(e) if e.is_instance_of::<PyRuntimeError>(py) => Ok(e.to_string()),
                    Err(e) => Err(format!("expected RuntimeError, got {e}")),
                    Ok(()) => Err("found locals outside any scope".to_owned()),
                })
                .collect::<Vec<_>>()
        })
    });
    let outcomes = get_runtime().block_on(handle).expect("the task panicked");
    for outcome in outcomes {
        let message = outcome.unwrap_or_else(|e| panic!("{e}"));
        assert!(message.contains("asyncio.run(main())"), "{message}");
    }
}

/// Reports, from its destructor, whether the current locals are the expected ones.
struct DropProbe {
    /// The expected loop and context, released inside the destructor's attach.
    expected: Option<(Py<PyAny>, Py<PyAny>)>,
    report: mpsc::Sender<Result<(), String>>,
}

impl DropProbe {
    fn new(
        event_loop: &Bound<'_, PyAny>,
        ctx: &Bound<'_, PyAny>,
    ) -> (Self, mpsc::Receiver<Result<(), String>>) {
        let (report, rx) = mpsc::channel();
        let expected = Some((event_loop.clone().unbind(), ctx.clone().unbind()));
        (Self { expected, report }, rx)
    }
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        let verdict = Python::attach(|py| {
            let (event_loop, ctx) = self.expected.take().expect("dropped once");
            let verdict = match get_current_locals(py) {
                Ok(l) if !l.event_loop(py).is(&event_loop) => Err("another loop".to_owned()),
                Ok(l) if !l.context(py).is(&ctx) => Err("another Context".to_owned()),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("no locals in the destructor: {e}")),
            };
            drop((event_loop, ctx));
            verdict
        });
        let _ = self.report.send(verdict);
    }
}

/// Waits (detached, so the destructor can attach) for the probe's verdict.
fn probe_verdict(py: Python<'_>, rx: mpsc::Receiver<Result<(), String>>) {
    wait_detached(py, rx, "the future was never dropped")
        .unwrap_or_else(|e| panic!("destructor saw the wrong locals: {e}"));
}

#[test]
fn c1_drop_inside_scope_sees_locals_when_aborted() {
    with_loop(|py, event_loop| {
        let ctx = new_context(py)?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let (probe, verdict) = DropProbe::new(event_loop, &ctx);
        let (started_tx, started) = mpsc::channel();
        let handle = get_runtime().spawn(scope(locals, async move {
            let _probe = probe;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        }));
        wait_detached(py, started, "the scoped task never started");
        handle.abort();
        probe_verdict(py, verdict);
        Ok(())
    });
}

#[test]
fn c1_drop_inside_scope_sees_locals_when_never_polled() {
    with_loop(|py, event_loop| {
        let ctx = new_context(py)?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let (probe, verdict) = DropProbe::new(event_loop, &ctx);
        let fut = scope(locals, async move {
            let _probe = probe;
        });
        // Dropped right here, on this (attached) thread, without ever being polled.
        drop(fut);
        probe_verdict(py, verdict);
        Ok(())
    });
}

#[test]
fn c1_drop_inside_scope_sees_locals_when_python_cancels() {
    with_loop(|py, event_loop| {
        let ctx = new_context(py)?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let (probe, verdict) = DropProbe::new(event_loop, &ctx);
        let (started_tx, started) = mpsc::channel();
        let fut = future_into_py_with_locals(py, locals, async move {
            let _probe = probe;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        })?;
        wait_detached(py, started, "the crossing's future never started");
        assert!(fut.call_method0("cancel")?.is_truthy()?);
        // Runs the loop so that the future's done callbacks (the crossing's guard) run.
        let err = run(event_loop, &fut).expect_err("a cancelled future must raise");
        let cancelled = py.import("asyncio")?.getattr("CancelledError")?;
        assert!(
            err.get_type(py).is(&cancelled),
            "expected CancelledError, got {err}"
        );
        probe_verdict(py, verdict);
        Ok(())
    });
}

#[test]
fn c1_drop_inside_scope_sees_locals_when_python_cancels_the_future() {
    with_loop(|py, event_loop| {
        let ctx = new_context(py)?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let (probe, verdict) = DropProbe::new(event_loop, &ctx);
        let (started_tx, started) = mpsc::channel();
        let fut = future_into_py_with_locals(py, locals, async move {
            let _probe = probe;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        })?;
        wait_detached(py, started, "the crossing's future never started");
        // Python cancels: the crossing's Rust work is dropped inside its scope (C3).
        fut.call_method0("cancel")?;
        // One loop iteration runs the future's done callback, which fires the token.
        assert!(
            run(event_loop, &fut).is_err(),
            "the cancelled future must raise"
        );
        drop(fut);
        probe_verdict(py, verdict);
        Ok(())
    });
}

#[test]
fn c1_locals_reach_a_future_holding_python_references() {
    // A crossing future that owns Python references (wrapped so a drop is always attached) and
    // compares them with what it sees: the comparison happens on the runtime thread.
    with_loop(|py, event_loop| {
        let ctx = new_context(py)?;
        let locals = TaskLocals::new(event_loop.clone()).with_context(ctx.clone());
        let expected = Attached::new((event_loop.clone().unbind(), ctx.unbind()));
        let fut = future_into_py_with_locals(py, locals, async move {
            tokio::task::yield_now().await;
            Python::attach(|py| {
                let (event_loop, ctx) = expected.take();
                let current = get_current_locals(py)?;
                Ok(current.event_loop(py).is(&event_loop) && current.context(py).is(&ctx))
            })
        })?;
        let same: bool = run(event_loop, &fut)?.extract()?;
        assert!(same, "the runtime thread saw other locals");
        Ok(())
    });
}
