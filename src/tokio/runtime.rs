//! The bridge's tokio runtime (rule R1): built from a builder, borrowed, or reached through a
//! handle, and kept driven when it is a current-thread runtime the bridge owns.
//!
//! # Invariants
//! 1. The runtime is set once per process ([`RUNTIME`]); every spawn of the bridge goes
//!    through [`handle`], so a handed-over [`Handle`] is used everywhere.
//! 2. A current-thread runtime the bridge built is driven by one bridge thread
//!    ([`DRIVER_THREAD`]) blocked in `block_on(pending())` for the life of the process. Others
//!    may `block_on` the same runtime too: tokio lets one of them hold the scheduler at a time.
//!    A borrowed runtime or a handle is driven by its owner.
//! 3. The driver and the worker threads are marked as runtime threads: they never attach
//!    inside the bridge (A1).

use crate::attach::mark_runtime_thread;
use std::sync::{Mutex, OnceLock, PoisonError};

pub use ::tokio::runtime::{Builder, Handle, Runtime};

/// The name of the thread that drives a current-thread runtime the bridge built.
pub const DRIVER_THREAD: &str = "pyo3-async-bridge-driver";

/// Where the bridge's runtime comes from.
enum Source {
    /// Built by the bridge ([`init`] or the default multi-thread builder).
    Owned(Runtime),
    /// Handed over with [`init_with_runtime`].
    Borrowed(&'static Runtime),
    /// Handed over with [`init_with_handle`]; [`get_runtime`] refuses to answer.
    Handle(Handle),
}

impl Source {
    fn handle(&self) -> &Handle {
        match self {
            Source::Owned(rt) => rt.handle(),
            Source::Borrowed(rt) => rt.handle(),
            Source::Handle(h) => h,
        }
    }
}

static BUILDER: Mutex<Option<Builder>> = Mutex::new(None);
static RUNTIME: OnceLock<Source> = OnceLock::new();

/// The runtime was already set (built on first use or handed over) when [`init_with_handle`]
/// was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the pyo3-async-bridge tokio runtime is already set (init_with_runtime or init_with_handle \
     was called, or a crossing already used the runtime): hand over the runtime before the \
     first crossing"
)]
pub struct AlreadyInitialized;

/// Sets the builder of the runtime the bridge builds on first use.
///
/// As in `pyo3-async-runtimes`, this has no effect once the runtime is set (built by a first
/// crossing or [`get_runtime`], or handed over); a later call replaces an earlier builder.
/// A current-thread builder is fine: the bridge drives that runtime from its own thread
/// (`pyo3-async-bridge-driver`), so no thread needs to be started by hand; a thread of the
/// user's that also runs `get_runtime().block_on(pending())` keeps working.
///
/// # Examples
/// ```
/// let mut builder = tokio::runtime::Builder::new_current_thread();
/// builder.enable_all();
/// pyo3_async_bridge::tokio::init(builder);
/// ```
pub fn init(builder: Builder) {
    *BUILDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(builder);
}

/// Hands the bridge a runtime the caller owns. The bridge spawns on it and never drives it: a
/// current-thread runtime must be driven by its owner (for example a thread blocked in
/// `runtime.block_on(...)`).
///
/// # Errors
/// `Err(())` when the runtime is already set, as in `pyo3-async-runtimes`.
#[allow(clippy::result_unit_err)]
pub fn init_with_runtime(runtime: &'static Runtime) -> Result<(), ()> {
    RUNTIME.set(Source::Borrowed(runtime)).map_err(|_| ())
}

/// Hands the bridge a [`Handle`] to a runtime the caller owns (for example the one of
/// `#[tokio::main]`). The bridge spawns through it; [`get_runtime`] then panics and
/// [`get_handle`] is the accessor.
///
/// A handle to a current-thread runtime must be driven by its owner: `Handle::block_on` does
/// not drive the runtime's IO and timers, so the bridge cannot do it, and crossings make no
/// progress while nothing drives that runtime.
///
/// # Examples
/// ```
/// #[tokio::main]
/// async fn main() {
///     pyo3_async_bridge::tokio::init_with_handle(tokio::runtime::Handle::current())
///         .expect("first use of the bridge");
/// }
/// ```
///
/// # Errors
/// [`AlreadyInitialized`] when the runtime is already set.
pub fn init_with_handle(handle: Handle) -> Result<(), AlreadyInitialized> {
    RUNTIME
        .set(Source::Handle(handle))
        .map_err(|_| AlreadyInitialized)
}

/// The bridge's tokio runtime: by default a multi-thread runtime, built on first use.
///
/// # Panics
/// When the runtime was handed over as a [`Handle`] ([`init_with_handle`]): use
/// [`get_handle`]. When the runtime cannot be built (the builder given to [`init`] fails).
pub fn get_runtime() -> &'static Runtime {
    match source() {
        Source::Owned(rt) => rt,
        Source::Borrowed(rt) => rt,
        Source::Handle(_) => panic!(
            "pyo3-async-bridge was given a tokio Handle (init_with_handle), not a Runtime: use \
             pyo3_async_bridge::tokio::get_handle() instead of get_runtime()"
        ),
    }
}

/// A handle to the bridge's runtime, however it was set up (built on first use if needed).
///
/// # Panics
/// When the runtime cannot be built (the builder given to [`init`] fails).
pub fn get_handle() -> Handle {
    handle().clone()
}

/// The handle every spawn of the bridge goes through (invariant 1). Any thread.
pub(crate) fn handle() -> &'static Handle {
    source().handle()
}

fn source() -> &'static Source {
    if let Some(source) = RUNTIME.get() {
        return source;
    }
    // Built under the builder's lock: one build per process even when threads race here.
    // `OnceLock::set` can still lose to a concurrent `init_with_*`; the hand-over then wins and
    // the runtime built here is dropped unused (no task was spawned on it yet).
    let mut builder = BUILDER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(source) = RUNTIME.get() {
        return source;
    }
    let runtime = match builder.as_mut() {
        Some(user) => user.build(),
        None => default_builder().build(),
    }
    .unwrap_or_else(|e| panic!("pyo3-async-bridge failed to build its tokio runtime: {e}"));
    let current_thread =
        runtime.handle().runtime_flavor() == ::tokio::runtime::RuntimeFlavor::CurrentThread;
    let won = RUNTIME.set(Source::Owned(runtime)).is_ok();
    drop(builder);
    let source = RUNTIME.get().expect("set just above");
    if let (true, true, Source::Owned(rt)) = (won, current_thread, source) {
        start_driver(rt);
    }
    source
}

fn default_builder() -> Builder {
    let mut b = Builder::new_multi_thread();
    b.enable_all()
        .thread_name("pyo3-async-bridge-worker")
        .on_thread_start(mark_runtime_thread);
    b
}

/// Invariant 2: a bridge thread drives the current-thread runtime forever. Tasks spawned before
/// it runs wait in the runtime's queue and run once it takes the scheduler, so none is lost.
fn start_driver(runtime: &'static Runtime) {
    let spawned = std::thread::Builder::new()
        .name(DRIVER_THREAD.to_owned())
        .spawn(move || {
            mark_runtime_thread();
            runtime.block_on(std::future::pending::<()>());
        });
    if let Err(e) = spawned {
        panic!(
            "pyo3-async-bridge could not start the thread driving its current-thread runtime: {e}"
        );
    }
}
