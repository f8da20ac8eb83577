//! `make demo`: a runnable tour of pyo3-async-bridge. Every step asserts what it prints; the
//! process exits non-zero when one fails.
//!
//! The interpreter is embedded: a small Python module calls into Rust functions registered
//! below, and Rust awaits Python coroutines.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_async_bridge::tokio::{future_into_py, into_future};
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

const TOUR: &std::ffi::CStr = cr#"
import asyncio, contextvars
import tour

request_id = contextvars.ContextVar("request_id")

def step(title, got, expected):
    ok = got == expected
    print(f"  {'ok ' if ok else 'FAIL'} {title}: {got!r}")
    if not ok:
        raise SystemExit(f"step failed: {title}: expected {expected!r}, got {got!r}")

async def python_side(x):
    await asyncio.sleep(0.01)
    return f"python saw {x} in request {request_id.get()}"

async def main():
    print("1. Python awaits Rust (tokio sleep, then a value)")
    step("await rust_sleep(0.05, 21)", await tour.rust_sleep(0.05, 21), 42)

    print("2. Rust awaits Python (into_future inside a crossing)")
    request_id.set("req-7")
    step("await rust_awaits(python_side(1))", await tour.rust_awaits(python_side(1)),
         "python saw 1 in request req-7")

    print("3. contextvars follow the crossing; concurrent requests never mix")
    async def request(n):
        request_id.set(f"req-{n}")
        return await tour.rust_awaits(python_side(n))
    got = await asyncio.gather(*(request(n) for n in range(100)))
    step("100 concurrent requests see their own id",
         all(g == f"python saw {n} in request req-{n}" for n, g in enumerate(got)), True)

    print("4. An error crosses with its type and message")
    try:
        await tour.rust_fails()
    except ValueError as e:
        step("ValueError from Rust", str(e), "the Rust side refused")
    else:
        step("ValueError from Rust", "no exception", "ValueError")

    print("5. A panic crosses as RustPanic with its message")
    try:
        await tour.rust_panics()
    except tour.RustPanic as e:
        step("RustPanic from Rust", str(e), "the Rust side panicked")
    else:
        step("RustPanic from Rust", "no exception", "RustPanic")

    step("the loop and runtime still work", await tour.rust_sleep(0, 5), 10)

asyncio.run(main())
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
        m.add("RustPanic", py.get_type::<pyo3_async_bridge::RustPanic>())?;
        py.import("sys")?.getattr("modules")?.set_item("tour", &m)?;
        let globals = PyDict::new(py);
        py.run(TOUR, Some(&globals), None)
    })
    .inspect_err(|e| Python::attach(|py| e.print(py)))
}
