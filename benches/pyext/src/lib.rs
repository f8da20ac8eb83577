//! Benchmark extension `bridge_benches`: the same operations implemented three ways, side by
//! side, so `benches/run.py` can time them under the same machine conditions.
//!
//! * `ours_*`: through this repository's `pyo3-async-bridge`.
//! * `par_*`: through `pyo3-async-runtimes` 0.30.0 from crates.io (the crate we mirror).
//! * `native_*`: PyO3's own `async fn` pyfunctions (`experimental-async`). PyO3's coroutine has
//!   no tokio runtime, so only the ready value and the tokio sleep (spawned on a runtime of this
//!   module, awaited through its `JoinHandle`) have a native form.
//!
//! Every function takes plain integers and returns the Python awaitable, so the Python side pays
//! the same call overhead for each implementation.

use pyo3::prelude::*;
use std::sync::OnceLock;
use std::time::Duration;

/// Operations through `pyo3-async-bridge`.
mod ours {
    use super::*;
    use pyo3_async_bridge::tokio::{future_into_py, into_future};

    /// (a) A Rust future that resolves to `n` at once.
    #[pyfunction]
    pub(crate) fn ours_ready(py: Python<'_>, n: i64) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move { Ok(n) })
    }

    /// (b) Converts `awaitable` with `into_future` at the call (loop thread), then awaits it
    /// inside the crossing's Rust future and returns its result.
    #[pyfunction]
    pub(crate) fn ours_await_py<'py>(
        py: Python<'py>,
        awaitable: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = into_future(awaitable)?;
        future_into_py(py, fut)
    }

    /// (b') Inside the crossing, on a tokio thread: attaches, calls `func()` to get a coroutine,
    /// converts it with `into_future`, and awaits it.
    #[pyfunction]
    pub(crate) fn ours_call_py(py: Python<'_>, func: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            let fut = Python::attach(|py| into_future(func.bind(py).call0()?))?;
            fut.await
        })
    }

    /// (c) A tokio sleep of `micros` microseconds, then `n`.
    #[pyfunction]
    pub(crate) fn ours_sleep(py: Python<'_>, micros: u64, n: i64) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            tokio::time::sleep(Duration::from_micros(micros)).await;
            Ok(n)
        })
    }

    /// Experiment knob (`run.py --ours-workers N`): gives the bridge a multi-thread runtime with
    /// `worker_threads` workers. Only effective before the bridge's first crossing.
    #[pyfunction]
    pub(crate) fn ours_init_runtime(worker_threads: usize) {
        let mut builder = pyo3_async_bridge::tokio::Builder::new_multi_thread();
        builder.enable_all().worker_threads(worker_threads);
        pyo3_async_bridge::tokio::init(builder);
    }

    /// The bridge's queue counters `(wakeups, drains, jobs)`, summed over every loop.
    #[pyfunction]
    pub(crate) fn ours_queue_stats() -> (u64, u64, u64) {
        let s = pyo3_async_bridge::debug::queue_stats();
        (s.wakeups, s.drains, s.jobs)
    }
}

/// The same operations through `pyo3-async-runtimes` 0.30.0.
mod par {
    use super::*;
    use pyo3_async_runtimes::tokio::{future_into_py, into_future};

    /// (a) A Rust future that resolves to `n` at once.
    #[pyfunction]
    pub(crate) fn par_ready(py: Python<'_>, n: i64) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move { Ok(n) })
    }

    /// (b) Converts `awaitable` with `into_future` at the call (loop thread), then awaits it
    /// inside the crossing's Rust future and returns its result.
    #[pyfunction]
    pub(crate) fn par_await_py<'py>(
        py: Python<'py>,
        awaitable: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = into_future(awaitable)?;
        future_into_py(py, fut)
    }

    /// (b') Inside the crossing, on a tokio thread: attaches, calls `func()` to get a coroutine,
    /// converts it with `into_future`, and awaits it.
    #[pyfunction]
    pub(crate) fn par_call_py(py: Python<'_>, func: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            let fut = Python::attach(|py| into_future(func.bind(py).call0()?))?;
            fut.await
        })
    }

    /// (c) A tokio sleep of `micros` microseconds, then `n`.
    #[pyfunction]
    pub(crate) fn par_sleep(py: Python<'_>, micros: u64, n: i64) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            tokio::time::sleep(Duration::from_micros(micros)).await;
            Ok(n)
        })
    }
}

/// The same operations as PyO3 `async fn` pyfunctions (`pyo3::coroutine::Coroutine`).
mod native {
    use super::*;

    /// A multi-thread runtime of this module, configured like the two bridges' defaults, for
    /// the one native operation that needs tokio (the sleep).
    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("failed to build the benchmark runtime")
        })
    }

    /// (a) Resolves to `n` at once: the coroutine finishes on its first `send`.
    #[pyfunction]
    pub(crate) async fn native_ready(n: i64) -> i64 {
        n
    }

    /// (c) A tokio sleep spawned on this module's runtime and awaited through its `JoinHandle`
    /// by PyO3's coroutine, whose waker calls `loop.call_soon_threadsafe` from the tokio thread.
    #[pyfunction]
    pub(crate) async fn native_sleep(micros: u64, n: i64) -> PyResult<i64> {
        runtime()
            .spawn(async move {
                tokio::time::sleep(Duration::from_micros(micros)).await;
                n
            })
            .await
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }
}

#[pymodule]
fn bridge_benches(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ours::ours_ready, m)?)?;
    m.add_function(wrap_pyfunction!(ours::ours_await_py, m)?)?;
    m.add_function(wrap_pyfunction!(ours::ours_call_py, m)?)?;
    m.add_function(wrap_pyfunction!(ours::ours_sleep, m)?)?;
    m.add_function(wrap_pyfunction!(ours::ours_queue_stats, m)?)?;
    m.add_function(wrap_pyfunction!(ours::ours_init_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(par::par_ready, m)?)?;
    m.add_function(wrap_pyfunction!(par::par_await_py, m)?)?;
    m.add_function(wrap_pyfunction!(par::par_call_py, m)?)?;
    m.add_function(wrap_pyfunction!(par::par_sleep, m)?)?;
    m.add_function(wrap_pyfunction!(native::native_ready, m)?)?;
    m.add_function(wrap_pyfunction!(native::native_sleep, m)?)?;
    Ok(())
}
