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
// The docs are written for the default features: built without tokio, their links into the
// `tokio` module have no target.
#![cfg_attr(not(feature = "tokio-runtime"), allow(rustdoc::broken_intra_doc_links))]

// The attributes' expansions name the crate `::pyo3_async_bridge` inside its own package
// (unit tests, examples, doctests): this makes that path resolve in the library itself too.
#[allow(unused_extern_crates)]
extern crate self as pyo3_async_bridge;

#[cfg(feature = "async-std-runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-std-runtime")))]
pub mod async_std;
mod attach;
mod cancel;
mod cooperative;
pub mod err;
mod exit;
mod ffi;
pub mod generic;
mod interrupt;
mod into_future;
mod into_py;
mod live;
mod locals;
// What the expansions of the `main` and `test` attributes call; not part of the stable API.
#[cfg(all(
    any(feature = "attributes", feature = "testing"),
    any(feature = "tokio-runtime", feature = "async-std-runtime")
))]
#[doc(hidden)]
pub mod macro_support;
#[cfg(all(
    any(feature = "attributes", feature = "testing"),
    any(feature = "tokio-runtime", feature = "async-std-runtime")
))]
#[doc(hidden)]
pub use macro_support as __macro_support;
mod py;
mod queue;
mod registry;
mod run;
// The crossing state machine: public for the property tests (`proptests/`), hidden from the
// docs, not part of the stable API.
#[doc(hidden)]
pub mod state;
mod task;
#[cfg(all(
    feature = "testing",
    any(feature = "tokio-runtime", feature = "async-std-runtime")
))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
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
    pub use crate::attach::{attach_counts, mark_runtime_thread, AttachCounts};
    pub use crate::queue::{queue_stats, QueueStats};
    pub use crate::registry::live_crossings;
}

/// The registry behind [`testing::main`], re-exported as `pyo3-async-runtimes` does, so that
/// `inventory::submit!` of a [`testing::Test`] works without a dependency of one's own.
#[cfg(all(
    feature = "testing",
    any(feature = "tokio-runtime", feature = "async-std-runtime")
))]
#[doc(hidden)]
pub use inventory;

/// Registers a test for [`testing::main`]; what `tokio::test` and `async_std::test` expand to
/// besides the `#[test]` function. A no-op without the `testing` feature.
#[cfg(all(
    feature = "testing",
    any(feature = "tokio-runtime", feature = "async-std-runtime")
))]
#[doc(hidden)]
#[macro_export]
macro_rules! __register_test {
    (name: $name:expr, test_fn: $test_fn:path, ignore: $ignore:expr, should_panic: $should_panic:expr, runner: $runner:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::testing::Registered {
                test: $crate::testing::Test { name: $name, test_fn: &$test_fn },
                ignore: $ignore,
                should_panic: $should_panic,
                runner: $runner,
            }
        }
    };
}

/// Registers a test for `testing::main`: without the `testing` feature, nothing to do.
#[cfg(not(all(
    feature = "testing",
    any(feature = "tokio-runtime", feature = "async-std-runtime")
)))]
#[doc(hidden)]
#[macro_export]
macro_rules! __register_test {
    ($($t:tt)*) => {};
}
