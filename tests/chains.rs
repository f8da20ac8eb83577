//! Rules C5 and C6: chains that cross between Python and Rust several times.
//!
//! A chain of depth `n` is Python layer `n` awaiting Rust layer `n` (`future_into_py`), which
//! awaits Python layer `n - 1` (`into_future`), and so on down to Python layer 0, which awaits
//! the Rust leaf. Depth 1 is the chain A (Python) -> B (Rust) -> C (Python) -> D (Rust).
//!
//! C6: cancelling the top task stops every layer: each Rust layer and the leaf is dropped on a
//! runtime thread with its token fired, and each Python layer's `except CancelledError` and
//! `finally` run. C5 and C6: a cancellation raised at the bottom (the Rust leaf returns
//! `CancelledError`, or Python layer 0 raises it) surfaces as a cancellation in every outer
//! layer: each Rust layer's asyncio future ends *cancelled* (not failed) with the message, and
//! the awaiting tasks' `cancelling()` stays 0. A layer that catches it stops it there.

mod common;

use common::{
    load_module, run_bounded, with_loop, Attached, Drops, PyDrops, Signal, WORKER_THREAD,
};
use pyo3::exceptions::asyncio::CancelledError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use pyo3_async_bridge::tokio::{future_into_py, into_future};
use pyo3_async_bridge::DROP_CANCEL_MESSAGE;

const HELPERS: &std::ffi::CStr = cr#"
import asyncio

class Chain:
    """Python layers 0..=depth around Rust layers 1..=depth and the Rust leaf.

    `leaf`: "pending" (the Rust leaf waits forever), "rust-cancelled" (the Rust leaf returns
    CancelledError("deep")) or "python-cancelled" (Python layer 0 raises CancelledError("deep")
    instead of awaiting a leaf). The layer `catch_at`, if any, catches CancelledError and
    returns "caught at <n>".
    """

    def __init__(self, rust_layer, rust_leaf, drops, started, depth, leaf, catch_at=None):
        self.rust_layer = rust_layer
        self.rust_leaf = rust_leaf
        self.drops = drops
        self.started = started
        self.depth = depth
        self.leaf = leaf
        self.catch_at = catch_at
        self.cancelled = {}     # layer -> (args, cancelling(), rust future cancelled())
        self.finally_ran = set()
        self.all_finally = asyncio.Event()

    async def layer(self, n):
        fut = None
        try:
            if n == 0:
                if self.leaf == "python-cancelled":
                    await asyncio.sleep(0)
                    raise asyncio.CancelledError("deep")
                fut = self.rust_leaf(self.drops, self.started, self.leaf)
            else:
                fut = self.rust_layer(self.layer(n - 1), self.drops, f"rust{n}")
            return await fut
        except asyncio.CancelledError as e:
            self.cancelled[n] = (
                e.args,
                asyncio.current_task().cancelling(),
                None if fut is None else fut.cancelled(),
            )
            if n == self.catch_at:
                return f"caught at {n}"
            raise
        finally:
            self.finally_ran.add(n)
            if len(self.finally_ran) == self.depth + 1:
                self.all_finally.set()

async def cancel_top(chain, msg):
    """Starts the chain, cancels its top task once the leaf runs, and waits for every layer's
    finally. Returns the top task's CancelledError args."""
    task = asyncio.ensure_future(chain.layer(chain.depth))
    await chain.started.wait()
    task.cancel(msg)
    try:
        await task
    except asyncio.CancelledError as e:
        args = e.args
    else:
        raise AssertionError(f"the chain returned {task.result()!r}")
    await chain.all_finally.wait()
    return args

async def run_chain(chain):
    """Runs the chain to its end: ("value", result) or ("cancelled", args, task.cancelled(),
    task.cancelling())."""
    task = asyncio.ensure_future(chain.layer(chain.depth))
    try:
        value = await task
    except asyncio.CancelledError as e:
        outcome = ("cancelled", e.args, task.cancelled(), task.cancelling())
    else:
        outcome = ("value", value)
    await chain.all_finally.wait()
    return outcome
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_chains")
}

/// Rust layer: a crossing that awaits the Python awaitable `inner` and returns its outcome,
/// holding a drop guard named `name`. A cancellation from below is returned as is (C5).
#[pyfunction]
fn rust_layer<'py>(
    inner: Bound<'py, PyAny>,
    drops: &Bound<'py, PyDrops>,
    name: String,
) -> PyResult<Bound<'py, PyAny>> {
    let py = inner.py();
    let guard = drops.get().0.guard(name);
    let inner = Attached::new(inner.unbind());
    future_into_py(py, async move {
        let _guard = guard;
        let fut = Python::attach(|py| into_future(inner.take().into_bound(py)))?;
        fut.await
    })
}

/// Rust leaf: a crossing holding a guard named "leaf" that signals `started`, then waits
/// forever ("pending") or returns `CancelledError("deep")` ("rust-cancelled").
#[pyfunction]
fn rust_leaf<'py>(
    drops: &Bound<'py, PyDrops>,
    started: &Bound<'py, Signal>,
    kind: String,
) -> PyResult<Bound<'py, PyAny>> {
    let py = drops.py();
    let guard = drops.get().0.guard("leaf");
    started.call0()?;
    future_into_py(py, async move {
        let _guard = guard;
        match kind.as_str() {
            "pending" => std::future::pending::<PyResult<()>>().await,
            "rust-cancelled" => Err(CancelledError::new_err("deep")),
            other => Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown leaf {other:?}"
            ))),
        }
    })
}

/// A `Chain` of `depth` with a fresh counter.
fn chain<'py>(
    py: Python<'py>,
    depth: usize,
    leaf: &str,
    catch_at: Option<usize>,
) -> PyResult<(Bound<'py, PyAny>, Drops)> {
    let drops = Drops::new();
    let (started, _notify) = Signal::pair(py)?;
    let chain = helpers(py).getattr("Chain")?.call1((
        wrap_pyfunction!(rust_layer, py)?,
        wrap_pyfunction!(rust_leaf, py)?,
        PyDrops::wrap(py, &drops)?,
        started,
        depth,
        leaf,
        catch_at,
    ))?;
    Ok((chain, drops))
}

/// `chain.cancelled`: layer -> (CancelledError args, cancelling(), Rust future cancelled()).
type Cancelled = std::collections::BTreeMap<usize, (Vec<String>, usize, Option<bool>)>;

fn cancel_the_top_stops_every_layer(depth: usize) {
    with_loop(|py, event_loop| {
        let loop_thread = std::thread::current().id();
        let (chain, drops) = chain(py, depth, "pending", None)?;
        let driver = helpers(py).call_method1("cancel_top", (&chain, "stop chain"))?;
        let top_args: Vec<String> = run_bounded(event_loop, &driver)?.extract()?;
        assert_eq!(top_args, ["stop chain"]);
        // Every Python layer was cancelled and ran its finally: the top by its task's cancel,
        // each inner one by the drop of the PyFuture awaiting it (C4).
        let cancelled: Cancelled = chain.getattr("cancelled")?.extract()?;
        let expected: Cancelled = (0..=depth)
            .map(|n| {
                let msg = if n == depth {
                    "stop chain"
                } else {
                    DROP_CANCEL_MESSAGE
                };
                (n, (vec![msg.to_owned()], 1, Some(true)))
            })
            .collect();
        assert_eq!(
            cancelled, expected,
            "layer -> (args, cancelling(), fut.cancelled())"
        );
        let finally_ran: std::collections::BTreeSet<usize> =
            chain.getattr("finally_ran")?.extract()?;
        assert_eq!(finally_ran, (0..=depth).collect());
        // Every Rust layer and the leaf were dropped once, on a runtime thread, inside their
        // crossing, with its token fired.
        drops.wait_for(py, depth + 1, "the Rust layers and the leaf");
        assert_eq!(drops.count(), depth + 1);
        drops
            .report(&format!("rust{depth}"))
            .assert_cancelled_on_runtime(loop_thread, Some("stop chain"));
        for n in 1..depth {
            drops
                .report(&format!("rust{n}"))
                .assert_cancelled_on_runtime(loop_thread, Some(DROP_CANCEL_MESSAGE));
        }
        drops
            .report("leaf")
            .assert_cancelled_on_runtime(loop_thread, Some(DROP_CANCEL_MESSAGE));
        Ok(())
    });
}

#[test]
fn c6_cancelling_a_stops_b_c_and_d() {
    // A = Python layer 1, B = "rust1", C = Python layer 0, D = "leaf".
    cancel_the_top_stops_every_layer(1);
}

#[test]
fn c6_cancelling_the_top_of_a_deep_chain_stops_every_layer() {
    cancel_the_top_stops_every_layer(8);
}

/// Runs a chain whose bottom raises `CancelledError("deep")` and checks that it surfaces as a
/// cancellation in every layer, up to the top task.
fn inner_cancellation_surfaces_in_every_layer(depth: usize, leaf: &str) {
    with_loop(|py, event_loop| {
        let (chain, drops) = chain(py, depth, leaf, None)?;
        let driver = helpers(py).call_method1("run_chain", (&chain,))?;
        let outcome: (String, Vec<String>, bool, usize) =
            run_bounded(event_loop, &driver)?.extract()?;
        assert_eq!(
            outcome,
            ("cancelled".to_owned(), vec!["deep".to_owned()], true, 0),
            "the top task: (outcome, args, cancelled(), cancelling())"
        );
        let cancelled: Cancelled = chain.getattr("cancelled")?.extract()?;
        let expected: Cancelled = (0..=depth)
            .map(|n| {
                // Layer 0 raised it itself when the leaf is Python's.
                let fut = (n > 0 || leaf == "rust-cancelled").then_some(true);
                (n, (vec!["deep".to_owned()], 0, fut))
            })
            .collect();
        assert_eq!(
            cancelled, expected,
            "layer -> (args, cancelling(), the awaited Rust future ended cancelled)"
        );
        let rust_crossings = if leaf == "rust-cancelled" {
            depth + 1
        } else {
            depth
        };
        let reports = drops.wait_for(py, rust_crossings, "the Rust layers");
        assert_eq!(drops.count(), rust_crossings, "{reports:#?}");
        for report in reports {
            assert_eq!(
                report.thread_name.as_deref(),
                Some(WORKER_THREAD),
                "{report:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn c5_rust_leaf_cancellation_surfaces_as_cancellation_in_b_and_a() {
    inner_cancellation_surfaces_in_every_layer(1, "rust-cancelled");
}

#[test]
fn c5_rust_leaf_cancellation_surfaces_through_a_deep_chain() {
    inner_cancellation_surfaces_in_every_layer(8, "rust-cancelled");
}

#[test]
fn c5_python_cancellation_surfaces_through_a_deep_chain() {
    inner_cancellation_surfaces_in_every_layer(8, "python-cancelled");
}

#[test]
fn c6_a_layer_that_catches_the_cancellation_stops_it() {
    const DEPTH: usize = 8;
    const CATCH_AT: usize = 4;
    with_loop(|py, event_loop| {
        let (chain, drops) = chain(py, DEPTH, "rust-cancelled", Some(CATCH_AT))?;
        let driver = helpers(py).call_method1("run_chain", (&chain,))?;
        let outcome: (String, String) = run_bounded(event_loop, &driver)?.extract()?;
        assert_eq!(
            outcome,
            ("value".to_owned(), format!("caught at {CATCH_AT}"))
        );
        // Layers 0..=CATCH_AT saw the cancellation; none above it did.
        let cancelled: Cancelled = chain.getattr("cancelled")?.extract()?;
        let expected: Cancelled = (0..=CATCH_AT)
            .map(|n| (n, (vec!["deep".to_owned()], 0, Some(true))))
            .collect();
        assert_eq!(cancelled, expected);
        // The Rust layers above the catch delivered the value: none was cancelled.
        drops.wait_for(py, DEPTH + 1, "the Rust layers and the leaf");
        assert_eq!(drops.count(), DEPTH + 1);
        for n in CATCH_AT + 1..=DEPTH {
            let report = drops.report(&format!("rust{n}"));
            assert_eq!(report.token_fired, Some(false), "{report:?}");
        }
        Ok(())
    });
}
