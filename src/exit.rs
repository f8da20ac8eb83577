//! Interpreter exit, as far as the bridge's own threads are concerned.
//!
//! A thread that attaches while the interpreter finalizes hangs or is killed with
//! `pthread_exit`, which unwinds through Rust frames and aborts. So an `atexit` hook closes a
//! gate, and after that the bridge's own threads never attach again.
//!
//! # Deadlock safety
//! A bridge thread holds the gate across its whole attach. The hook runs on the exiting thread
//! with the GIL held, so it detaches before it waits for the gate: a bridge thread waiting for
//! the GIL inside the gate gets it, finishes, and opens the way.

use crate::attach::attach;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::sync::{Mutex, PoisonError};

/// `true` while the bridge's threads may attach.
static GATE: Mutex<bool> = Mutex::new(true);

/// Bridge thread (never a runtime thread): runs `f` attached, unless the interpreter exits.
pub(crate) fn attach_unless_exiting<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    let open = GATE.lock().unwrap_or_else(PoisonError::into_inner);
    if *open {
        Some(attach(f))
    } else {
        None
    }
}

/// The `atexit` hook.
#[pyfunction]
fn close_bridge_gate(py: Python<'_>) {
    py.detach(|| *GATE.lock().unwrap_or_else(PoisonError::into_inner) = false);
}

/// Registers the `atexit` hook once per process. Attached.
pub(crate) fn register_atexit_hook(py: Python<'_>) -> PyResult<()> {
    static REGISTERED: PyOnceLock<()> = PyOnceLock::new();
    REGISTERED
        .get_or_try_init(py, || {
            let hook = wrap_pyfunction!(close_bridge_gate, py)?;
            py.import("atexit")?.call_method1("register", (hook,))?;
            Ok::<_, PyErr>(())
        })
        .map(|_| ())
}
