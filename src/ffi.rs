//! The crate's only `unsafe`: asking CPython whether this thread holds the interpreter, and
//! using its token when it does.
//!
//! PyO3 keeps its own attach count private, so the bridge asks CPython directly. It is used to
//! decide whether a Python reference may be released right here, or must travel back to its loop
//! thread through the delivery queue (see `queue::release`).

/// Whether the current thread is attached to the interpreter (holds the GIL).
pub(crate) fn thread_is_attached() -> bool {
    // SAFETY: `PyGILState_Check` takes no arguments, touches only thread-local and runtime
    // state, and the CPython docs allow calling it "from any thread at any time". The bridge
    // only calls it while it owns Python references, i.e. after the interpreter was initialised.
    unsafe { pyo3::ffi::PyGILState_Check() == 1 }
}

/// Runs `f` with this thread's interpreter token if the thread is attached; else does nothing.
/// For destructors that hold Python objects and run only where the bridge already is attached
/// (a job dropped by a drain or by a watchdog sweep), without a second, counted attach.
pub(crate) fn if_attached(f: impl for<'py> FnOnce(pyo3::Python<'py>)) {
    if thread_is_attached() {
        // SAFETY: `PyGILState_Check` just said this thread is attached, and the token does not
        // outlive this call, during which the thread stays attached (nothing here detaches).
        f(unsafe { pyo3::Python::assume_attached() })
    }
}
