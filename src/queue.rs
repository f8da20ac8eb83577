//! The per-loop delivery queue: the only road from other threads to an event loop's thread.
//!
//! Completions of Rust futures, requests to start Python tasks, and Python references that must
//! be released all travel as [`Job`]s. A producer wakes the loop only when the queue goes from
//! empty to non-empty ("armed"), so a burst of completions costs one wakeup.
//!
//! # Invariants
//! 1. `armed` is true exactly while a wakeup is owed: set by the producer that found the queue
//!    disarmed, cleared by the drain in the same critical section that takes the batch.
//! 2. Jobs run only on the loop thread, inside the drain, with no lock held (a job may re-enter
//!    the bridge and push again).
//! 3. No Python reference is dropped by a thread that is not attached: [`LoopQueue::release`]
//!    sends it home instead.
//!
//! # No lost wakeup
//! A producer pushes and reads `armed` under one lock. If the drain already took the batch,
//! `armed` is false and the producer writes a new wakeup; otherwise its job is in the batch the
//! drain is about to take (invariant 1). A wakeup with nothing to do costs one empty drain.

use crate::exit::{attach_unless_exiting, register_atexit_hook};
use crate::ffi::thread_is_attached;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyWeakrefMethods, PyWeakrefReference};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};

/// Work for the loop thread. Runs attached, on the loop thread, with no bridge lock held.
pub(crate) type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// Environment variable forcing the `call_soon_threadsafe` wakeup even where `add_reader` works.
pub const WAKEUP_ENV: &str = "PYO3_ASYNC_BRIDGE_WAKEUP";

static WAKEUPS: AtomicU64 = AtomicU64::new(0);
static DRAINS: AtomicU64 = AtomicU64::new(0);
static JOBS: AtomicU64 = AtomicU64::new(0);

/// Queue counters, summed over every loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Wakeups sent to a loop (empty → non-empty transitions).
    pub wakeups: u64,
    /// Drains the loops ran.
    pub drains: u64,
    /// Jobs the drains ran.
    pub jobs: u64,
}

/// Snapshot of the queue counters.
pub fn queue_stats() -> QueueStats {
    QueueStats {
        wakeups: WAKEUPS.load(Ordering::Relaxed),
        drains: DRAINS.load(Ordering::Relaxed),
        jobs: JOBS.load(Ordering::Relaxed),
    }
}

struct Pending {
    jobs: Vec<Job>,
    /// Invariant 1.
    armed: bool,
}

/// How a producer wakes the loop thread.
enum Wake {
    /// One byte into a socket whose other end is registered with `loop.add_reader`. Needs no
    /// interpreter at all, so any thread may do it.
    ///
    /// The second stream is a clone of the reading end, kept open for as long as the queue
    /// lives: a write never meets a closed peer (no `EPIPE`, no `SIGPIPE` in a host that does
    /// not ignore it), even after the loop closed and dropped its reader.
    #[cfg(unix)]
    Socket(
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ),
    /// `loop.call_soon_threadsafe(drainer)`, made by the bridge's waker thread (never a runtime
    /// thread), once per batch.
    Threadsafe,
}

/// One event loop's queue. Shared by every crossing on that loop.
pub(crate) struct LoopQueue {
    pending: Mutex<Pending>,
    wake: Wake,
    /// `loop.call_soon_threadsafe` and the drainer, for [`Wake::Threadsafe`].
    threadsafe: OnceLock<(Py<PyAny>, Py<Drainer>)>,
}

impl LoopQueue {
    /// Queues `job` for the loop thread. Any thread; never attaches.
    pub(crate) fn push(self: &Arc<Self>, job: Job) {
        let must_wake = {
            let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            p.jobs.push(job);
            !std::mem::replace(&mut p.armed, true)
        };
        if must_wake {
            WAKEUPS.fetch_add(1, Ordering::Relaxed);
            self.wake();
        }
    }

    fn wake(self: &Arc<Self>) {
        match &self.wake {
            #[cfg(unix)]
            Wake::Socket(s, _reader) => {
                use std::io::Write;
                // A full socket buffer (WouldBlock) already guarantees a pending wakeup.
                let _ = (&*s).write(&[1]);
            }
            Wake::Threadsafe => waker_thread().send(Arc::clone(self)).unwrap_or(()),
        }
    }

    /// Releases Python references: right here if this thread is attached, else on the loop
    /// thread (invariant 3).
    pub(crate) fn release<T: Send + 'static>(self: &Arc<Self>, refs: T) {
        if thread_is_attached() {
            drop(refs);
        } else {
            self.push(Box::new(move |_py| drop(refs)));
        }
    }

    /// Loop thread: runs every queued job. Called by the drainer, so already attached.
    fn drain(&self, py: Python<'_>) {
        DRAINS.fetch_add(1, Ordering::Relaxed);
        loop {
            let batch = {
                let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                if p.jobs.is_empty() {
                    p.armed = false;
                    return;
                }
                std::mem::take(&mut p.jobs)
            };
            JOBS.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for job in batch {
                // A job must not take the loop down with it; each handles its own errors.
                if let Err(payload) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(py)))
                {
                    let msg = crate::err::panic_message(&*payload);
                    crate::err::RustPanic::new_err(format!("bridge job panicked: {msg}"))
                        .write_unraisable(py, None);
                }
            }
            // Jobs pushed while this batch ran are taken by the next round: the queue stays
            // armed until it is seen empty under the lock.
        }
    }
}

impl Drop for LoopQueue {
    fn drop(&mut self) {
        if !thread_is_attached() {
            // Jobs and the threadsafe pair hold Python references and this thread may not
            // release them; their loop is gone (nobody else holds the queue). Leak rather than
            // touch the interpreter.
            let pending = self
                .pending
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::forget(std::mem::take(&mut pending.jobs));
            if let Some(pair) = self.threadsafe.take() {
                std::mem::forget(pair);
            }
        }
    }
}

/// The callable registered with the loop (`add_reader` or `call_soon_threadsafe`).
#[pyclass(frozen, module = "pyo3_async_bridge")]
pub(crate) struct Drainer {
    queue: std::sync::Weak<LoopQueue>,
    #[cfg(unix)]
    reader: Option<std::os::unix::net::UnixStream>,
}

#[pymethods]
impl Drainer {
    /// Loop thread.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        #[cfg(unix)]
        if let Some(r) = &self.reader {
            use std::io::Read;
            let mut buf = [0u8; 256];
            // Empty the socket first: a byte written after this point belongs to a job the
            // drain below may or may not take, and then wakes us once more (no lost wakeup).
            loop {
                match (&*r).read(&mut buf) {
                    Ok(0) => return self.unregister(py, r), // the queue is gone
                    Ok(_) => {}
                    Err(_) => break, // WouldBlock: empty
                }
            }
        }
        if let Some(q) = self.queue.upgrade() {
            q.drain(py);
        }
        Ok(())
    }
}

impl Drainer {
    /// Loop thread: the writing end closed (its queue was dropped, e.g. it lost a registration
    /// race), so the reader would be readable forever: take it off the loop.
    #[cfg(unix)]
    fn unregister(&self, py: Python<'_>, r: &std::os::unix::net::UnixStream) -> PyResult<()> {
        use std::os::fd::AsRawFd;
        let running = crate::py::running_loop_or_none(py)?;
        if !running.is_none() {
            running.call_method1(intern!(py, "remove_reader"), (r.as_raw_fd(),))?;
        }
        Ok(())
    }
}

/// The bridge's waker thread for [`Wake::Threadsafe`]: attaches once per batch of queues, never
/// a runtime thread.
fn waker_thread() -> &'static mpsc::Sender<Arc<LoopQueue>> {
    static TX: OnceLock<mpsc::Sender<Arc<LoopQueue>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<LoopQueue>>();
        std::thread::Builder::new()
            .name("pyo3-async-bridge-waker".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    // After interpreter exit began, the batch is dropped unattached: each queue
                    // leaks its Python references rather than touch the interpreter.
                    attach_unless_exiting(|py| {
                        for q in batch {
                            if let Some((call_soon, drainer)) = q.threadsafe.get() {
                                // A closed loop refuses the call: its jobs are dropped with
                                // the queue, quietly (lifecycle rules).
                                let _ = call_soon.bind(py).call1((drainer.clone_ref(py),));
                            }
                            drop(q);
                        }
                    });
                }
            })
            .expect("failed to spawn the pyo3-async-bridge waker thread");
        tx
    })
}

/// Registry entry: a loop (held weakly) and its queue.
struct Entry {
    loop_ref: Py<PyWeakrefReference>,
    queue: Arc<LoopQueue>,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The queue of `event_loop`, created and registered with the loop on first use. Attached, any
/// thread; registration with the loop itself happens on the loop thread.
///
/// # Deadlock safety
/// The registry lock is never held while Python code may run (registration calls into the
/// loop, which may release the GIL to another thread that then waits for this lock). Only weak
/// reference look-ups, which run no Python code, happen under it.
pub(crate) fn queue_for(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<LoopQueue>> {
    if let Some(q) = lookup(event_loop) {
        return Ok(q);
    }
    let queue = register(event_loop)?;
    let loop_ref = PyWeakrefReference::new(event_loop)?.unbind();
    let py = event_loop.py();
    let mut reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    // Another thread may have registered the same loop meanwhile; the first entry wins and this
    // queue is dropped (its reader stays registered but is never written to).
    if let Some(q) = find(&reg, event_loop) {
        return Ok(q);
    }
    // Forget loops that were collected. Their entries are released after the lock is dropped.
    let (live, dead): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut *reg)
        .into_iter()
        .partition(|e| e.loop_ref.bind(py).upgrade().is_some());
    *reg = live;
    reg.push(Entry {
        loop_ref,
        queue: Arc::clone(&queue),
    });
    drop(reg);
    drop(dead);
    Ok(queue)
}

fn lookup(event_loop: &Bound<'_, PyAny>) -> Option<Arc<LoopQueue>> {
    find(
        &REGISTRY.lock().unwrap_or_else(PoisonError::into_inner),
        event_loop,
    )
}

/// Weak reference look-ups only: runs no Python code (see "Deadlock safety").
fn find(reg: &[Entry], event_loop: &Bound<'_, PyAny>) -> Option<Arc<LoopQueue>> {
    let py = event_loop.py();
    reg.iter()
        .find(|e| {
            e.loop_ref
                .bind(py)
                .upgrade()
                .is_some_and(|l| l.is(event_loop))
        })
        .map(|e| Arc::clone(&e.queue))
}

fn register(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<LoopQueue>> {
    let py = event_loop.py();
    let not_a_loop = || crate::BridgeError::NotALoop(describe(event_loop));
    if !event_loop.hasattr(intern!(py, "call_soon_threadsafe"))? {
        return Err(not_a_loop().into());
    }
    let force_threadsafe = std::env::var(WAKEUP_ENV).is_ok_and(|v| v == "threadsafe");
    #[cfg(unix)]
    if !force_threadsafe {
        if let Some(q) = register_socket(event_loop)? {
            return Ok(q);
        }
    }
    let _ = force_threadsafe;
    let queue = Arc::new(LoopQueue {
        pending: Mutex::new(Pending {
            jobs: Vec::new(),
            armed: false,
        }),
        wake: Wake::Threadsafe,
        threadsafe: OnceLock::new(),
    });
    let drainer = Py::new(
        py,
        Drainer {
            queue: Arc::downgrade(&queue),
            #[cfg(unix)]
            reader: None,
        },
    )?;
    // The waker thread attaches; it must stop doing so when the interpreter exits.
    register_atexit_hook(py)?;
    let call_soon = event_loop.getattr(intern!(py, "call_soon_threadsafe"))?;
    let _ = queue.threadsafe.set((call_soon.unbind(), drainer));
    Ok(queue)
}

/// Registers a socket reader with the loop; `None` where the loop has no `add_reader`
/// (Windows' proactor loop raises `NotImplementedError`).
#[cfg(unix)]
fn register_socket(event_loop: &Bound<'_, PyAny>) -> PyResult<Option<Arc<LoopQueue>>> {
    use std::os::fd::AsRawFd;
    let py = event_loop.py();
    let (reader, writer) = std::os::unix::net::UnixStream::pair()
        .and_then(|(r, w)| {
            r.set_nonblocking(true)?;
            w.set_nonblocking(true)?;
            Ok((r, w))
        })
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("socketpair: {e}")))?;
    let fd = reader.as_raw_fd();
    let queue = Arc::new(LoopQueue {
        pending: Mutex::new(Pending {
            jobs: Vec::new(),
            armed: false,
        }),
        wake: Wake::Socket(
            writer,
            reader
                .try_clone()
                .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("socket: {e}")))?,
        ),
        threadsafe: OnceLock::new(),
    });
    let drainer = Bound::new(
        py,
        Drainer {
            queue: Arc::downgrade(&queue),
            reader: Some(reader),
        },
    )?;
    let running = crate::py::running_loop_or_none(py)?;
    let add_reader = match event_loop.getattr(intern!(py, "add_reader")) {
        Ok(a) => a,
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The reader's handle keeps the context current at registration, and every drain runs in
    // it: register from a fresh, empty context so no caller's values leak into later crossings
    // (C8).
    let fresh = crate::py::context_type(py)?.call0()?;
    let outcome = if running.is(event_loop) || !is_running(event_loop)? {
        // This thread owns the loop (or nobody runs it): register now.
        fresh.call_method1(intern!(py, "run"), (add_reader, fd, drainer))
    } else {
        // add_reader is not thread-safe: let the loop thread register. Bytes written before
        // then wait in the socket and fire the reader as soon as it is registered.
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item(intern!(py, "context"), fresh)?;
        event_loop.call_method(
            intern!(py, "call_soon_threadsafe"),
            (add_reader, fd, drainer),
            Some(&kwargs),
        )
    };
    match outcome {
        Ok(_) => Ok(Some(queue)),
        // `add_reader` is not implemented (Windows' proactor loop): fall back.
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyNotImplementedError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn is_running(event_loop: &Bound<'_, PyAny>) -> PyResult<bool> {
    event_loop
        .call_method0(intern!(event_loop.py(), "is_running"))?
        .is_truthy()
}

/// `repr(obj)` for error messages, with a fallback when `repr` itself fails.
pub(crate) fn describe(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| format!("<{} object>", obj.get_type()))
}
