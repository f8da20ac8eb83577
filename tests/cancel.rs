//! Rule C3 from Rust's side: Python cancels, Rust stops.
//!
//! Inside a crossing made by `future_into_py`, `tokio::cancellation_token()` is the crossing's
//! token and fires when Python cancels (`fut.cancel(msg)`, `task.cancel(msg)`), with
//! `cancellation_reason()` the message; both are `None` outside any crossing. In the default
//! mode the Rust future is then dropped on a runtime thread, inside the crossing's scope; the
//! token does not fire when the crossing completes. The bridge's `tokio::spawn` carries the
//! crossing into the child (locals and a child token): cancelling the crossing ends the child
//! with `None`, completing it lets the child run on. Cooperative mode
//! (`CancelMode::Cooperative`): `cancel()` returns `True`, the future stays pending until the
//! Rust future finishes and then ends cancelled; with a grace period the Rust future is dropped.

mod common;

use common::{
    crossing, in_running_loop, load_module, locals_for, run_bounded, wait_detached, with_loop,
    Attached, Drops, Signal, SIGNAL_TIMEOUT,
};
use pyo3::exceptions::asyncio::CancelledError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::tokio::{
    cancellation_reason, cancellation_token, future_into_py, future_into_py_with_options,
    get_current_locals, get_runtime, scope, spawn, JoinHandle,
};
use pyo3_async_bridge::{CancelMode, IntoPyOptions};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio

async def await_it(fut):
    return await fut

async def cancel_awaiting_task(fut, msg):
    """A task awaits `fut`; the task is cancelled with `msg` while it waits."""
    task = asyncio.ensure_future(await_it(fut))
    await asyncio.sleep(0)
    assert not task.done(), "the task stopped awaiting the crossing"
    task.cancel(msg)
    try:
        await task
    except asyncio.CancelledError as e:
        return e.args, task.cancelled(), fut.cancelled()
    raise AssertionError("the task was not cancelled")

async def cancel_task_awaiting_cooperative(fut, saw_cancel, release, msg):
    """Cancels a task awaiting a cooperative crossing and checks that both stay pending until
    the Rust future finished (it waits for `release` after it saw its token fire)."""
    task = asyncio.ensure_future(await_it(fut))
    await asyncio.sleep(0)
    task.cancel(msg)
    await saw_cancel.wait()
    for _ in range(5):
        await asyncio.sleep(0)
    pending = not task.done() and not fut.done()
    release()
    try:
        await task
    except asyncio.CancelledError as e:
        return pending, e.args, task.cancelled(), fut.cancelled()
    raise AssertionError(f"the task ended with {task.result()!r}")

async def yield_a_few():
    for _ in range(5):
        await asyncio.sleep(0)
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_cancel")
}

/// The `args` of `err`, which must be an `asyncio.CancelledError`.
fn cancelled_args(py: Python<'_>, err: &PyErr) -> Vec<String> {
    assert!(
        err.is_instance_of::<CancelledError>(py),
        "expected CancelledError, got {err}"
    );
    err.value(py)
        .getattr("args")
        .and_then(|a| a.extract())
        .unwrap_or_else(|e| panic!("CancelledError args: {e}"))
}

/// Test thread: waits (detached) until `token` fires, or panics after [`SIGNAL_TIMEOUT`].
fn wait_fired(py: Python<'_>, token: &CancellationToken, what: &str) {
    let fired = py.detach(|| {
        get_runtime()
            .block_on(async { tokio::time::timeout(SIGNAL_TIMEOUT, token.cancelled()).await })
    });
    assert!(fired.is_ok(), "{what}: the token never fired");
}

/// Test thread: waits (detached) for a spawned child's outcome.
fn join<T: Send + 'static>(py: Python<'_>, handle: JoinHandle<Option<T>>, what: &str) -> Option<T> {
    py.detach(|| {
        get_runtime().block_on(async { tokio::time::timeout(SIGNAL_TIMEOUT, handle).await })
    })
    .unwrap_or_else(|_| panic!("{what}: the child never ended"))
    .unwrap_or_else(|e| panic!("{what}: the child failed: {e}"))
}

/// What a crossing's future sees when it starts: its token and reason.
type Start = (Option<CancellationToken>, Option<String>);

/// A default-mode crossing made by `future_into_py` on the running loop: it reports its token
/// and reason, then waits forever holding a guard named "crossing".
fn pending_crossing<'py>(
    event_loop: &Bound<'py, PyAny>,
    drops: &Drops,
) -> PyResult<(Bound<'py, PyAny>, mpsc::Receiver<Start>)> {
    let (tx, rx) = mpsc::channel();
    let guard = drops.guard("crossing");
    let fut = in_running_loop(event_loop, move |py| {
        future_into_py(py, async move {
            let _guard = guard;
            let _ = tx.send((cancellation_token(), cancellation_reason()));
            std::future::pending::<PyResult<()>>().await
        })
    })?;
    Ok((fut, rx))
}

/// Waits for the crossing to start and returns its token, checking that nothing fired yet.
fn started_token(py: Python<'_>, rx: mpsc::Receiver<Start>) -> CancellationToken {
    let (token, reason) = wait_detached(py, rx, "the crossing's future never started");
    let token = token.expect("cancellation_token() is None inside a crossing");
    assert!(!token.is_cancelled(), "the token fired before any cancel");
    assert_eq!(reason, None, "a reason before any cancel");
    token
}

#[test]
fn c3_no_token_or_reason_outside_a_crossing() {
    // The test thread itself.
    assert!(cancellation_token().is_none());
    assert!(cancellation_reason().is_none());
    // A plain runtime task.
    let plain =
        get_runtime().spawn(async { (cancellation_token().is_some(), cancellation_reason()) });
    assert_eq!(
        get_runtime().block_on(plain).expect("plain task"),
        (false, None)
    );
    with_loop(|py, event_loop| {
        // `scope` gives locals, not a crossing.
        let scoped = get_runtime().spawn(scope(locals_for(event_loop)?, async {
            (cancellation_token().is_some(), cancellation_reason())
        }));
        let scoped = py
            .detach(|| get_runtime().block_on(scoped))
            .expect("scoped task");
        assert_eq!(scoped, (false, None), "a token inside a mere scope");
        // Inside a crossing there is one, but a plain runtime task spawned from it has none.
        let fut = crossing(event_loop, async {
            let inside = cancellation_token().is_some();
            let plain = get_runtime().spawn(async { cancellation_token().is_some() });
            let plain = plain.await.expect("plain task");
            Ok((inside, plain))
        })?;
        let (inside, plain): (bool, bool) = run_bounded(event_loop, &fut)?.extract()?;
        assert!(inside, "no token inside a crossing");
        assert!(!plain, "a plain tokio task inherited the crossing's token");
        Ok(())
    });
}

#[test]
fn c3_python_cancel_with_message_fires_the_token_with_that_reason() {
    with_loop(|py, event_loop| {
        let drops = Drops::new();
        let (fut, started) = pending_crossing(event_loop, &drops)?;
        let token = started_token(py, started);
        assert!(fut.call_method1("cancel", ("stop now",))?.is_truthy()?);
        let err = run_bounded(event_loop, &fut).expect_err("a cancelled future must raise");
        assert_eq!(cancelled_args(py, &err), ["stop now"]);
        wait_fired(py, &token, "fut.cancel(msg)");
        let reports = drops.wait_for(py, 1, "the Rust future");
        assert_eq!(reports[0].token_fired, Some(true));
        assert_eq!(reports[0].reason.as_deref(), Some("stop now"));
        Ok(())
    });
}

#[test]
fn c3_python_cancel_without_message_leaves_the_reason_none() {
    with_loop(|py, event_loop| {
        let drops = Drops::new();
        let (fut, started) = pending_crossing(event_loop, &drops)?;
        let token = started_token(py, started);
        assert!(fut.call_method0("cancel")?.is_truthy()?);
        let err = run_bounded(event_loop, &fut).expect_err("a cancelled future must raise");
        assert!(cancelled_args(py, &err).is_empty());
        wait_fired(py, &token, "fut.cancel()");
        let reports = drops.wait_for(py, 1, "the Rust future");
        assert_eq!(reports[0].token_fired, Some(true));
        assert_eq!(reports[0].reason, None, "a reason without a message");
        Ok(())
    });
}

#[test]
fn c3_task_cancel_drops_the_rust_future_on_a_runtime_thread_inside_the_scope() {
    with_loop(|py, event_loop| {
        let loop_thread = std::thread::current().id();
        let drops = Drops::new();
        let (fut, started) = pending_crossing(event_loop, &drops)?;
        let token = started_token(py, started);
        let driver = helpers(py).call_method1("cancel_awaiting_task", (&fut, "task stop"))?;
        let (args, task_cancelled, fut_cancelled): (Vec<String>, bool, bool) =
            run_bounded(event_loop, &driver)?.extract()?;
        assert_eq!(args, ["task stop"]);
        assert!(task_cancelled && fut_cancelled);
        wait_fired(py, &token, "task.cancel(msg)");
        let reports = drops.wait_for(py, 1, "the Rust future");
        assert_eq!(drops.count(), 1, "dropped more than once: {reports:#?}");
        reports[0].assert_cancelled_on_runtime(loop_thread, Some("task stop"));
        Ok(())
    });
}

#[test]
fn c3_token_does_not_fire_when_the_crossing_completes() {
    with_loop(|py, event_loop| {
        let drops = Drops::new();
        let (tx, rx) = mpsc::channel();
        let guard = drops.guard("crossing");
        let fut = in_running_loop(event_loop, move |py| {
            future_into_py(py, async move {
                let _guard = guard;
                let _ = tx.send(cancellation_token());
                Ok(7_i64)
            })
        })?;
        assert_eq!(run_bounded(event_loop, &fut)?.extract::<i64>()?, 7);
        let token = wait_detached(py, rx, "the crossing never started").expect("a token");
        // The future and its done callback go away; the loop runs what that scheduled.
        drop(fut);
        py.import("gc")?.call_method0("collect")?;
        run_bounded(event_loop, &helpers(py).call_method0("yield_a_few")?)?;
        let reports = drops.wait_for(py, 1, "the Rust future");
        assert_eq!(
            reports[0].token_fired,
            Some(false),
            "dropped after completion with a fired token: {reports:#?}"
        );
        assert!(!token.is_cancelled(), "the token fired after completion");
        Ok(())
    });
}

/// `(loop, context)` as `get_current_locals` sees them, attached.
fn current_locals() -> PyResult<Attached<(Py<PyAny>, Py<PyAny>)>> {
    Python::attach(|py| {
        let locals = get_current_locals(py)?;
        Ok(Attached::new((
            locals.event_loop(py).unbind(),
            locals.context(py).unbind(),
        )))
    })
}

#[test]
fn c3_spawn_carries_the_locals_and_a_child_token() {
    with_loop(|py, event_loop| {
        let fut = in_running_loop(event_loop, |py| {
            future_into_py(py, async {
                let parent_token = cancellation_token().expect("a token in the crossing");
                let parent = current_locals()?;
                let child = spawn(async {
                    tokio::task::yield_now().await;
                    (cancellation_token(), current_locals())
                });
                let (child_token, child) = child
                    .await
                    .expect("the child panicked")
                    .expect("the child was cancelled although its crossing was not");
                let child = child?;
                let child_token = child_token.expect("no token in a spawned child");
                // A child token: cancelling it leaves the crossing's token alone.
                child_token.cancel();
                let parent_fired = parent_token.is_cancelled();
                let (parent, child) = Python::attach(|_py| (parent.take(), child.take()));
                Ok((parent, child, parent_fired))
            })
        })?;
        type Seen = ((Py<PyAny>, Py<PyAny>), (Py<PyAny>, Py<PyAny>), bool);
        let ((parent_loop, parent_ctx), (child_loop, child_ctx), parent_fired): Seen =
            run_bounded(event_loop, &fut)?.extract()?;
        assert!(parent_loop.bind(py).is(event_loop), "the crossing's loop");
        assert!(
            child_loop.bind(py).is(event_loop),
            "the child saw another loop"
        );
        assert!(
            child_ctx.bind(py).is(parent_ctx.bind(py)),
            "the child saw another Context"
        );
        assert!(
            !parent_fired,
            "the child's token is the crossing's own token"
        );
        Ok(())
    });
}

#[test]
fn c3_cancelling_the_crossing_ends_spawned_children_with_none() {
    with_loop(|py, event_loop| {
        let loop_thread = std::thread::current().id();
        let drops = Drops::new();
        let (parent_guard, child_guard) = (drops.guard("parent"), drops.guard("child"));
        let (tx, rx) = mpsc::channel();
        let fut = in_running_loop(event_loop, move |py| {
            future_into_py(py, async move {
                let _guard = parent_guard;
                let (started_tx, started) = tokio::sync::oneshot::channel();
                let child = spawn(async move {
                    let _guard = child_guard;
                    let _ = started_tx.send(());
                    std::future::pending::<u32>().await
                });
                let _ = started.await;
                let _ = tx.send(child);
                std::future::pending::<PyResult<()>>().await
            })
        })?;
        let child = wait_detached(py, rx, "the child never started");
        assert!(fut
            .call_method1("cancel", ("stop children",))?
            .is_truthy()?);
        let err = run_bounded(event_loop, &fut).expect_err("a cancelled future must raise");
        assert_eq!(cancelled_args(py, &err), ["stop children"]);
        assert_eq!(join(py, child, "cancelled crossing"), None);
        drops.wait_for(py, 2, "the crossing and its child");
        assert_eq!(drops.count(), 2);
        drops
            .report("parent")
            .assert_cancelled_on_runtime(loop_thread, Some("stop children"));
        drops
            .report("child")
            .assert_cancelled_on_runtime(loop_thread, Some("stop children"));
        Ok(())
    });
}

#[test]
fn c3_spawned_child_runs_on_after_the_crossing_completes() {
    with_loop(|py, event_loop| {
        let drops = Drops::new();
        let child_guard = drops.guard("child");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let fut = in_running_loop(event_loop, move |py| {
            future_into_py(py, async move {
                let child = spawn(async move {
                    let _guard = child_guard;
                    let released = released.await.is_ok();
                    (
                        released,
                        cancellation_token().map(|t| t.is_cancelled()),
                        5_u32,
                    )
                });
                let _ = tx.send(child);
                Ok(1_u32)
            })
        })?;
        assert_eq!(run_bounded(event_loop, &fut)?.extract::<u32>()?, 1);
        let child = wait_detached(py, rx, "the crossing never spawned its child");
        drop(fut);
        py.import("gc")?.call_method0("collect")?;
        run_bounded(event_loop, &helpers(py).call_method0("yield_a_few")?)?;
        assert_eq!(drops.count(), 0, "the child was dropped with its crossing");
        release.send(()).expect("the child is gone");
        let outcome = join(py, child, "completed crossing");
        assert_eq!(outcome, Some((true, Some(false), 5)));
        assert_eq!(drops.count(), 1);
        Ok(())
    });
}

/// The Rust side of a cooperative crossing: when it started, the reason it saw once its token
/// fired.
type Cooperative<'py> = (
    Bound<'py, PyAny>,
    mpsc::Receiver<()>,
    mpsc::Receiver<Option<String>>,
);

/// A cooperative crossing on the running loop: it reports start, waits for its token, reports
/// the reason (and notifies `saw_cancel`), waits for `release` (or forever without one) and
/// returns 42.
fn cooperative_crossing<'py>(
    event_loop: &Bound<'py, PyAny>,
    grace: Option<Duration>,
    drops: &Drops,
    saw_cancel: Option<Arc<Notify>>,
    release: Option<Arc<Notify>>,
) -> PyResult<Cooperative<'py>> {
    let (started_tx, started) = mpsc::channel();
    let (saw_tx, saw) = mpsc::channel();
    let guard = drops.guard("cooperative");
    let fut = in_running_loop(event_loop, move |py| {
        let options = IntoPyOptions::new().cancel_mode(CancelMode::Cooperative { grace });
        future_into_py_with_options(py, options, async move {
            let _guard = guard;
            let token = cancellation_token().expect("a token in the crossing");
            let _ = started_tx.send(());
            token.cancelled().await;
            let _ = saw_tx.send(cancellation_reason());
            if let Some(saw_cancel) = saw_cancel {
                saw_cancel.notify_one();
            }
            match release {
                Some(release) => common::notified(&release, "release").await?,
                None => std::future::pending().await,
            }
            Ok(42_i64)
        })
    })?;
    Ok((fut, started, saw))
}

#[test]
fn c3_cooperative_cancel_returns_true_and_waits_for_the_rust_future() {
    with_loop(|py, event_loop| {
        let loop_thread = std::thread::current().id();
        let drops = Drops::new();
        let release = Arc::new(Notify::new());
        let (fut, started, saw) =
            cooperative_crossing(event_loop, None, &drops, None, Some(release.clone()))?;
        wait_detached(py, started, "the crossing never started");
        let accepted = fut.call_method1("cancel", ("cooperative stop",))?;
        assert!(accepted.extract::<bool>()?, "cancel() must return True");
        assert!(!fut.call_method0("done")?.is_truthy()?, "ended at cancel()");
        let reason = wait_detached(py, saw, "the token never fired");
        assert_eq!(reason.as_deref(), Some("cooperative stop"));
        // The loop runs, the Rust future is still working: the future stays pending.
        run_bounded(event_loop, &helpers(py).call_method0("yield_a_few")?)?;
        assert!(
            !fut.call_method0("done")?.is_truthy()?,
            "ended before the Rust future finished"
        );
        assert_eq!(drops.count(), 0, "the Rust future was dropped");
        release.notify_one();
        let err = run_bounded(event_loop, &fut).expect_err("must end cancelled, not with 42");
        assert_eq!(cancelled_args(py, &err), ["cooperative stop"]);
        assert!(fut.call_method0("cancelled")?.is_truthy()?);
        let reports = drops.wait_for(py, 1, "the Rust future");
        reports[0].assert_cancelled_on_runtime(loop_thread, Some("cooperative stop"));
        Ok(())
    });
}

#[test]
fn c3_cooperative_task_cancel_waits_for_the_rust_future() {
    with_loop(|py, event_loop| {
        let drops = Drops::new();
        let (release, release_notify) = Signal::pair(py)?;
        let (saw_cancel, saw_notify) = Signal::pair(py)?;
        let (fut, started, saw) = cooperative_crossing(
            event_loop,
            None,
            &drops,
            Some(saw_notify),
            Some(release_notify),
        )?;
        wait_detached(py, started, "the crossing never started");
        let driver = helpers(py).call_method1(
            "cancel_task_awaiting_cooperative",
            (&fut, saw_cancel, release, "task stop"),
        )?;
        let (pending, args, task_cancelled, fut_cancelled): (bool, Vec<String>, bool, bool) =
            run_bounded(event_loop, &driver)?.extract()?;
        let reason = wait_detached(py, saw, "the token never fired");
        assert_eq!(reason.as_deref(), Some("task stop"));
        assert!(
            pending,
            "the task or the future ended before the Rust future"
        );
        assert_eq!(args, ["task stop"]);
        assert!(task_cancelled && fut_cancelled);
        drops.wait_for(py, 1, "the Rust future");
        Ok(())
    });
}

#[test]
fn c3_cooperative_grace_drops_the_rust_future() {
    const GRACE: Duration = Duration::from_millis(100);
    with_loop(|py, event_loop| {
        let loop_thread = std::thread::current().id();
        let drops = Drops::new();
        // No release: the Rust future ignores its token and would wait forever.
        let (fut, started, saw) =
            cooperative_crossing(event_loop, Some(GRACE), &drops, None, None)?;
        wait_detached(py, started, "the crossing never started");
        let cancelled_at = std::time::Instant::now();
        assert!(fut
            .call_method1("cancel", ("grace stop",))?
            .extract::<bool>()?);
        let err = run_bounded(event_loop, &fut).expect_err("must end cancelled");
        assert_eq!(cancelled_args(py, &err), ["grace stop"]);
        assert_eq!(
            wait_detached(py, saw, "the token never fired").as_deref(),
            Some("grace stop")
        );
        let reports = drops.wait_for(py, 1, "the Rust future after the grace period");
        reports[0].assert_cancelled_on_runtime(loop_thread, Some("grace stop"));
        assert!(
            reports[0].at.duration_since(cancelled_at) >= GRACE,
            "dropped {:?} after cancel(), before the grace period ran out",
            reports[0].at.duration_since(cancelled_at)
        );
        Ok(())
    });
}

#[test]
fn c3_cooperative_crossing_without_cancel_delivers_its_value() {
    with_loop(|py, event_loop| {
        let drops = Drops::new();
        let guard = drops.guard("cooperative");
        let fut = in_running_loop(event_loop, move |py| {
            let options = IntoPyOptions::new().cancel_mode(CancelMode::Cooperative { grace: None });
            future_into_py_with_options(py, options, async move {
                let _guard = guard;
                tokio::task::yield_now().await;
                Ok(42_i64)
            })
        })?;
        assert_eq!(run_bounded(event_loop, &fut)?.extract::<i64>()?, 42);
        let reports = drops.wait_for(py, 1, "the Rust future");
        assert_eq!(reports[0].token_fired, Some(false));
        // Cancelling a done future does nothing.
        assert!(!fut.call_method0("cancel")?.extract::<bool>()?);
        run_bounded(event_loop, &helpers(py).call_method0("yield_a_few")?)?;
        Ok(())
    });
}

/// Rule S: only the machine fires a crossing's tokens. A Rust future that cancels the token it
/// got (a child) neither drops itself nor cancels the crossing, in any mode, and the grace
/// timer does not start: the value arrives.
#[test]
fn c3_cancelling_the_handed_out_token_never_cancels_the_crossing() {
    for mode in [
        CancelMode::Drop,
        CancelMode::Cooperative { grace: None },
        CancelMode::Cooperative {
            grace: Some(Duration::from_millis(20)),
        },
    ] {
        with_loop(|py, event_loop| {
            let options = IntoPyOptions::new()
                .locals(common::locals_for(event_loop)?)
                .cancel_mode(mode);
            let fut =
                pyo3_async_bridge::tokio::future_into_py_with_options(py, options, async move {
                    let token = cancellation_token().expect("inside a crossing");
                    token.cancel();
                    assert!(token.is_cancelled());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(7_i64)
                })?;
            let got = common::run_bounded(event_loop, &fut).and_then(|v| v.extract::<i64>());
            assert_eq!(got.map_err(|e| e.to_string()), Ok(7), "{mode:?}");
            Ok(())
        });
    }
}

/// C3, cooperative: cleanup may fan out through the bridge's `spawn`. A flush spawned after
/// the signal runs to its end (its handle yields `Some`), and the Python future still ends
/// cancelled once the cleanup is done.
#[test]
fn c3_cooperative_cleanup_can_spawn_work_that_runs_to_its_end() {
    with_loop(|py, event_loop| {
        let (tx, rx) = mpsc::channel();
        let options = IntoPyOptions::new()
            .locals(common::locals_for(event_loop)?)
            .cancel_mode(CancelMode::Cooperative { grace: None });
        let (started_tx, started) = mpsc::channel();
        let fut = pyo3_async_bridge::tokio::future_into_py_with_options(py, options, async move {
            let token = cancellation_token().expect("inside a crossing");
            let _ = started_tx.send(());
            token.cancelled().await;
            let flush = spawn(async {
                let child_token = cancellation_token().expect("the child carries the crossing");
                tokio::time::sleep(Duration::from_millis(5)).await;
                (child_token.is_cancelled(), "flushed")
            });
            let _ = tx.send(flush.await.ok().flatten());
            Ok(())
        })?;
        common::wait_detached(py, started, "the cooperative crossing never started");
        assert!(fut.call_method1("cancel", ("stop",))?.is_truthy()?);
        let err = common::run_bounded(event_loop, &fut).expect_err("must end cancelled");
        assert!(err.is_instance_of::<CancelledError>(py), "{err}");
        let flushed = common::wait_detached(py, rx, "the cleanup never reported");
        assert_eq!(flushed, Some((true, "flushed")));
        Ok(())
    });
}
