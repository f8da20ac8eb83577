//! Python cancels, Rust stops (C3), cancellation as a typed outcome (C5), cooperative mode.

use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{
    cancellation_reason, cancellation_token, future_into_py_with_options,
};
use pyo3_async_bridge::{CancelMode, IntoPyOptions};
use std::time::Duration;

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

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cooperative_wait, m)?)?;
    Ok(())
}
