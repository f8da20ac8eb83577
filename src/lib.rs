//! # pyo3-async-bridge
//!
//! Tokio futures and Python asyncio coroutines awaiting each other through PyO3, with
//! cancellation that holds in both directions, `contextvars` carried across every crossing,
//! and a crossing that costs close to what asyncio itself costs.
//!
//! The API mirrors `pyo3-async-runtimes` 0.30: migrating means renaming the crate.
//!
//! * Python awaits Rust: [`tokio::future_into_py`] returns a real `asyncio.Future`.
//! * Rust awaits Python: [`tokio::into_future`] returns a [`PyFuture`].
//! * [`TaskLocals`] (event loop + `contextvars.Context`) travel with every crossing and are
//!   visible through [`tokio::get_current_locals`].
//!
//! The normative semantics live in `SPEC.md`; rule ids (C1, C2, …) are cited in the docs and
//! tests. `ARCHITECTURE.md` shows how a crossing flows through the modules.
//!
//! # Threads
//! Tokio worker threads never attach to the interpreter inside the bridge. Every touch of an
//! asyncio object happens on the loop thread, reached through one per-loop delivery queue
//! (see `ARCHITECTURE.md`) that wakes the loop once per batch.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a runtime feature the crossing machinery has no user yet (the generic runtime API
// comes with its own issue); it still compiles.
#![cfg_attr(not(feature = "tokio-runtime"), allow(dead_code))]

mod attach;
mod cancel;
#[cfg(feature = "tokio-runtime")]
mod cooperative;
pub mod err;
mod exit;
mod ffi;
mod into_future;
#[cfg(feature = "tokio-runtime")]
mod into_py;
mod live;
mod locals;
mod py;
mod queue;
mod registry;
// The crossing state machine: public for the property tests (`proptests/`), hidden from the
// docs, not part of the stable API.
#[doc(hidden)]
pub mod state;
mod task;
#[cfg(feature = "tokio-runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio-runtime")))]
pub mod tokio;
mod watch;

pub use cancel::{
    is_cancellation, CancelMode, IntoPyOptions, DROP_CANCEL_MESSAGE, EXIT_CANCEL_MESSAGE,
};
pub use err::{BridgeError, RustPanic};
pub use into_future::{into_future_with_locals, PyFuture};
pub use locals::{get_running_loop, TaskLocals};

/// Counters for tests and benchmarks. Not part of the stable API.
#[doc(hidden)]
pub mod debug {
    pub use crate::attach::{attach_counts, AttachCounts};
    pub use crate::queue::{queue_stats, QueueStats};
    pub use crate::registry::live_crossings;
}
