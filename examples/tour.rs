//! `make demo`: a runnable tour of pyo3-async-bridge. Every step asserts what it prints; the
//! process exits non-zero when one fails.
//!
//! The interpreter is embedded: a small Python module calls into Rust functions registered
//! below, and Rust awaits Python coroutines.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_async_bridge::tokio::{
    cancellation_reason, cancellation_token, future_into_py, future_into_py_with_options,
    into_future,
};
use pyo3_async_bridge::{generic, CancelMode, IntoPyOptions, TaskLocals};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Python awaits Rust: a tokio sleep, then a value.
#[pyfunction]
fn rust_sleep(py: Python<'_>, secs: f64, value: i64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        Ok(value * 2)
    })
}

/// Rust awaits Python: runs the coroutine `coro` on its loop and returns its result.
#[pyfunction]
fn rust_awaits(py: Python<'_>, coro: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let fut = Python::attach(|py| into_future(coro.into_bound(py)))?;
        fut.await
    })
}

/// An error crossing from Rust to Python.
#[pyfunction]
fn rust_fails(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        Err::<(), _>(pyo3::exceptions::PyValueError::new_err(
            "the Rust side refused",
        ))
    })
}

/// A panic crossing from Rust to Python.
#[pyfunction]
fn rust_panics(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        if true {
            panic!("the Rust side panicked");
        }
        Ok(())
    })
}

/// Set by `WorkGuard::drop` (step 6) and by the cooperative cleanup (step 8).
static DROPPED: AtomicBool = AtomicBool::new(false);
static CLEANED_UP: AtomicBool = AtomicBool::new(false);
static DROP_SEEN: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Held by long Rust work; says when (and why) the work was dropped.
struct WorkGuard;

impl Drop for WorkGuard {
    fn drop(&mut self) {
        // Runs on a runtime thread, inside the crossing's scope: the reason is visible here.
        let reason = cancellation_reason().unwrap_or_else(|| "no message".into());
        println!(
            "  (rust) long work dropped on {:?}; reason: {reason}",
            thread_name()
        );
        DROPPED.store(true, Ordering::SeqCst);
        DROP_SEEN.notify_one();
    }
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

/// Ten seconds of Rust work; Python will not wait that long.
#[pyfunction]
fn rust_long_work(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let _guard = WorkGuard;
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok("finished (unexpected)")
    })
}

/// Resolves once the long work was dropped (at most 5 s): the drop happens on a runtime thread,
/// so Python awaits it instead of guessing with a sleep.
#[pyfunction]
fn rust_work_dropped(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let notified = DROP_SEEN.notified();
        if !DROPPED.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_secs(5), notified).await;
        }
        Ok(DROPPED.load(Ordering::SeqCst))
    })
}

/// Rust gives a Python coroutine `secs` seconds (`tokio::time::timeout`), then drops it.
#[pyfunction]
fn rust_timeout(py: Python<'_>, coro: Py<PyAny>, secs: f64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let fut = Python::attach(|py| into_future(coro.into_bound(py)))?;
        match tokio::time::timeout(Duration::from_secs_f64(secs), fut).await {
            Ok(r) => r.map(|_| "finished in time"),
            Err(_elapsed) => Ok("rust timed out"),
        }
    })
}

/// Cooperative cancellation: when Python cancels, the token fires, Rust flushes for 50 ms and
/// only then does Python's cancellation (here a `TimeoutError`) arrive.
#[pyfunction]
fn rust_cooperative(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let options = IntoPyOptions::new().cancel_mode(CancelMode::Cooperative {
        grace: Some(Duration::from_secs(2)),
    });
    future_into_py_with_options(py, options, async move {
        let token = cancellation_token().expect("inside a crossing");
        token.cancelled().await;
        println!("  (rust) token fired; flushing before Python goes on");
        tokio::time::sleep(Duration::from_millis(50)).await;
        CLEANED_UP.store(true, Ordering::SeqCst);
        println!("  (rust) cleanup done");
        Ok(())
    })
}

/// Step 10: what became of the work left on a loop that was closed under it.
static LEFT_BEHIND: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static LEFT_BEHIND_SEEN: std::sync::Condvar = std::sync::Condvar::new();

fn left_behind(event: String) {
    println!("  (rust) {event}");
    LEFT_BEHIND.lock().unwrap().push(event);
    LEFT_BEHIND_SEEN.notify_all();
}

/// Rust work that never ends by itself, on the running loop; reports its drop.
#[pyfunction]
fn rust_forever(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    struct Reporter;
    impl Drop for Reporter {
        fn drop(&mut self) {
            left_behind(format!("work dropped on {:?}", thread_name()));
        }
    }
    future_into_py(py, async move {
        let _reporter = Reporter;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A tokio task (outside any crossing) awaits the Python coroutine `coro` and reports how that
/// ended.
#[pyfunction]
fn rust_awaits_in_background(coro: Bound<'_, PyAny>) -> PyResult<()> {
    let fut = into_future(coro)?;
    pyo3_async_bridge::tokio::get_runtime().spawn(async move {
        let outcome = fut.await;
        let text = Python::attach(|py| match outcome {
            Ok(_) => "the Python coroutine finished (unexpected)".to_owned(),
            Err(e) => format!("awaiting Python failed: {}", e.value(py)),
        });
        left_behind(text);
    });
    Ok(())
}

/// Blocks (GIL released, at most 5 s) until `n` events of step 10 were reported; returns them.
#[pyfunction]
fn rust_left_behind(py: Python<'_>, n: usize) -> Vec<String> {
    py.detach(|| {
        let events = LEFT_BEHIND.lock().unwrap();
        let (events, _) = LEFT_BEHIND_SEEN
            .wait_timeout_while(events, Duration::from_secs(5), |e| e.len() < n)
            .unwrap();
        events.clone()
    })
}

/// Whether the cooperative cleanup has finished.
#[pyfunction]
fn rust_cleaned_up() -> bool {
    CLEANED_UP.load(Ordering::SeqCst)
}

/// Step 9: another executor. A deliberately tiny one (a thread per task, futures' `block_on`),
/// plugged in through the `generic` traits: the crossing, its contextvars and its cancellation
/// are the bridge's, whatever runs the Rust future.
struct ThreadPerTask;

thread_local! {
    static TASK_LOCALS: std::cell::RefCell<Option<TaskLocals>> = const { std::cell::RefCell::new(None) };
}

/// A thread-per-task task can only end by finishing or panicking.
struct Panicked(Box<dyn std::any::Any + Send>);

impl generic::JoinError for Panicked {
    fn is_panic(&self) -> bool {
        true
    }
    fn into_panic(self) -> Box<dyn std::any::Any + Send> {
        self.0
    }
}

impl generic::Runtime for ThreadPerTask {
    type JoinError = Panicked;
    type JoinHandle = Pin<Box<dyn Future<Output = Result<(), Panicked>> + Send>>;

    fn spawn<F: Future<Output = ()> + Send + 'static>(fut: F) -> Self::JoinHandle {
        Self::spawn_blocking(move || futures::executor::block_on(fut))
    }

    fn spawn_blocking<F: FnOnce() + Send + 'static>(f: F) -> Self::JoinHandle {
        let (tx, rx) = futures::channel::oneshot::channel();
        std::thread::Builder::new()
            .name("thread-per-task".into())
            .spawn(move || {
                let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                let _ = tx.send(ended.map_err(Panicked));
            })
            .expect("spawn a task thread");
        Box::pin(async move { rx.await.unwrap_or(Ok(())) })
    }
}

impl generic::ContextExt for ThreadPerTask {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        // The task's own thread sets them when it first polls; one task per thread.
        Box::pin(async move {
            TASK_LOCALS.with(|l| *l.borrow_mut() = Some(locals));
            fut.await
        })
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.with(|l| l.borrow().clone())
    }
}

/// Python awaits Rust on `ThreadPerTask`, and that Rust awaits Python: `(thread, what Python saw)`.
#[pyfunction]
fn other_executor(py: Python<'_>, coro: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    generic::future_into_py::<ThreadPerTask, _, _>(py, async move {
        let fut = Python::attach(|py| generic::into_future::<ThreadPerTask>(coro.into_bound(py)))?;
        let seen = fut.await?;
        let thread = std::thread::current().name().unwrap_or_default().to_owned();
        Ok((thread, seen))
    })
}

const TOUR: &std::ffi::CStr = cr#"
import asyncio, contextvars
import tour

request_id = contextvars.ContextVar("request_id")

def step(title, got, expected):
    ok = got == expected
    print(f"  {'ok ' if ok else 'FAIL'} {title}: {got!r}", flush=True)
    if not ok:
        raise SystemExit(f"step failed: {title}: expected {expected!r}, got {got!r}")

async def python_side(x):
    await asyncio.sleep(0.01)
    return f"python saw {x} in request {request_id.get()}"

async def main():
    print("1. Python awaits Rust (tokio sleep, then a value)", flush=True)
    step("await rust_sleep(0.05, 21)", await tour.rust_sleep(0.05, 21), 42)

    print("2. Rust awaits Python (into_future inside a crossing)", flush=True)
    request_id.set("req-7")
    step("await rust_awaits(python_side(1))", await tour.rust_awaits(python_side(1)),
         "python saw 1 in request req-7")

    print("3. contextvars follow the crossing; concurrent requests never mix", flush=True)
    async def request(n):
        request_id.set(f"req-{n}")
        return await tour.rust_awaits(python_side(n))
    got = await asyncio.gather(*(request(n) for n in range(100)))
    step("100 concurrent requests see their own id",
         all(g == f"python saw {n} in request req-{n}" for n, g in enumerate(got)), True)

    print("4. An error crosses with its type and message", flush=True)
    try:
        await tour.rust_fails()
    except ValueError as e:
        step("ValueError from Rust", str(e), "the Rust side refused")
    else:
        step("ValueError from Rust", "no exception", "ValueError")

    print("5. A panic crosses as RustPanic with its message", flush=True)
    try:
        await tour.rust_panics()
    except tour.RustPanic as e:
        step("RustPanic from Rust", str(e), "the Rust side panicked")
    else:
        step("RustPanic from Rust", "no exception", "RustPanic")

    step("the loop and runtime still work", await tour.rust_sleep(0, 5), 10)

    print("6. A Python timeout cancels Rust work: the Rust future is dropped", flush=True)
    try:
        async with asyncio.timeout(0.05):
            await tour.rust_long_work()
        timed_out = False
    except TimeoutError:
        timed_out = True
    dropped = await tour.rust_work_dropped()
    step("asyncio.timeout raised TimeoutError", timed_out, True)
    step("the Rust future was dropped", dropped, True)

    print("7. A Rust timeout cancels a Python task: its finally runs", flush=True)
    cancelled_with = []
    finally_ran = asyncio.Event()
    async def slow_python():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as e:
            cancelled_with.append(e.args[0] if e.args else None)
            raise
        finally:
            print("  (python) finally ran in the cancelled task", flush=True)
            finally_ran.set()
    step("rust_timeout(slow_python(), 0.05)", await tour.rust_timeout(slow_python(), 0.05),
         "rust timed out")
    await asyncio.wait_for(finally_ran.wait(), 5)
    step("the Python task was cancelled with the bridge's message", cancelled_with,
         [tour.DROP_CANCEL_MESSAGE])

    print("8. Cooperative mode: Rust cleans up while Python waits", flush=True)
    try:
        async with asyncio.timeout(0.05):
            await tour.rust_cooperative()
    except TimeoutError:
        step("TimeoutError arrived after the Rust cleanup", tour.rust_cleaned_up(), True)
    else:
        step("TimeoutError arrived", False, True)


    print("9. Another executor (the generic traits): same crossing, same contextvars", flush=True)
    request_id.set("req-10")
    step("await other_executor(python_side(3))", await tour.other_executor(python_side(3)),
         ("thread-per-task", "python saw 3 in request req-10"))

asyncio.run(main())

print("10. A loop closes with work pending: the Rust work stops, awaiting Python fails", flush=True)
import time
loop = asyncio.new_event_loop()
async def leave_work():
    tour.rust_awaits_in_background(asyncio.sleep(3600))
    return tour.rust_forever()
kept = loop.run_until_complete(leave_work())  # still held: nothing depends on garbage collection
loop.close()
closed_at = time.monotonic()
events = tour.rust_left_behind(2)
elapsed = time.monotonic() - closed_at
step("the Rust work was dropped", any(e.startswith("work dropped") for e in events), True)
step("Rust awaiting Python got the bridge's error",
     any("the asyncio event loop was closed" in e for e in events), True)
step("both within about a second", elapsed < 2, True)
print("tour complete")
"#;

fn main() -> PyResult<()> {
    // Keep the demo's expected panic from printing a backtrace over the tour's output.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("  (rust) {info}");
    }));
    Python::attach(|py| {
        let m = PyModule::new(py, "tour")?;
        m.add_function(wrap_pyfunction!(rust_sleep, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_awaits, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_fails, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_panics, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_long_work, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_work_dropped, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_timeout, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_cooperative, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_cleaned_up, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_forever, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_awaits_in_background, &m)?)?;
        m.add_function(wrap_pyfunction!(rust_left_behind, &m)?)?;
        m.add_function(wrap_pyfunction!(other_executor, &m)?)?;
        m.add(
            "DROP_CANCEL_MESSAGE",
            pyo3_async_bridge::DROP_CANCEL_MESSAGE,
        )?;
        m.add("RustPanic", py.get_type::<pyo3_async_bridge::RustPanic>())?;
        py.import("sys")?.getattr("modules")?.set_item("tour", &m)?;
        let globals = PyDict::new(py);
        py.run(TOUR, Some(&globals), None)
    })
    .inspect_err(|e| Python::attach(|py| e.print(py)))
}
