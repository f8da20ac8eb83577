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
//!
//! # A closed loop (L1)
//! The queue also keeps the set of crossings pending on its loop ([`LiveSet`]) and the loop's
//! vital signs ([`Vitals`], see `watch`). When the bridge's watchdog finds the loop closed, it
//! calls [`LoopQueue::close`]: from then on nothing reaches the loop. A job pushed afterwards is
//! dropped at once by an attached thread; a thread that is not attached leaves it queued and
//! asks the watchdog to drop it, attached ([`LoopQueue::sweep`]). No job of a closed queue ever
//! runs, and none is left holding the queue alive.

use crate::exit::{attach_unless_exiting, register_atexit_hook};
use crate::ffi::thread_is_attached;
use crate::live::{LiveCrossing, LiveKey, LiveSet};
use crate::watch::Vitals;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyWeakrefMethods, PyWeakrefReference};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

/// Work for the loop thread. Runs attached, on the loop thread, with no bridge lock held.
pub(crate) type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// Environment variable forcing the `call_soon_threadsafe` wakeup even where `add_reader` works.
pub const WAKEUP_ENV: &str = "PYO3_ASYNC_BRIDGE_WAKEUP";

static WAKEUPS: AtomicU64 = AtomicU64::new(0);
static DRAINS: AtomicU64 = AtomicU64::new(0);
static JOBS: AtomicU64 = AtomicU64::new(0);
static LOOPS_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Queue counters, summed over every loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Wakeups sent to a loop (empty → non-empty transitions).
    pub wakeups: u64,
    /// Drains the loops ran.
    pub drains: u64,
    /// Jobs the drains ran.
    pub jobs: u64,
    /// Loops the watchdog found closed with crossings or jobs pending (L1).
    pub loops_closed: u64,
}

/// Snapshot of the queue counters.
pub fn queue_stats() -> QueueStats {
    QueueStats {
        wakeups: WAKEUPS.load(Ordering::Relaxed),
        drains: DRAINS.load(Ordering::Relaxed),
        jobs: JOBS.load(Ordering::Relaxed),
        loops_closed: LOOPS_CLOSED.load(Ordering::Relaxed),
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
    /// The drainer, for [`Wake::Threadsafe`]. (The loop is looked up through `event_loop` at
    /// each wakeup: a strong reference here would keep every such loop alive for good.)
    threadsafe: OnceLock<Py<Drainer>>,
    /// The loop, held weakly: the watchdog asks it `is_closed()` (L1). `None` only in `Drop`.
    event_loop: Option<Py<PyWeakrefReference>>,
    /// The crossings pending on the loop (L1, L2).
    live: Mutex<LiveSet>,
    /// Set, under the `pending` lock, once the loop is seen closed (L1).
    closed: AtomicBool,
    /// Signs of life and pings, read by the watchdog (L1).
    pub(crate) vitals: Vitals,
}

/// What a producer does with its job once the lock is released.
enum After {
    Nothing,
    Wake,
    /// The loop is closed and this thread is attached: drop the job here.
    Drop(Job),
    /// The loop is closed and this thread may not drop it: the watchdog will.
    AskSweep,
}

impl LoopQueue {
    /// Queues `job` for the loop thread. Any thread; never attaches.
    pub(crate) fn push(self: &Arc<Self>, job: Job) {
        let after = {
            let mut p = self.lock_pending();
            let closed = self.closed.load(Ordering::Relaxed);
            if closed && thread_is_attached() {
                After::Drop(job) // L1: nothing runs on a closed loop.
            } else {
                p.jobs.push(job);
                match (std::mem::replace(&mut p.armed, true), closed) {
                    (true, _) => After::Nothing,
                    (false, false) => After::Wake,
                    // A thread that may not drop it leaves it to the watchdog.
                    (false, true) => After::AskSweep,
                }
            }
        };
        match after {
            After::Nothing => {}
            After::Wake => {
                WAKEUPS.fetch_add(1, Ordering::Relaxed);
                self.wake();
                // A drain is owed: make sure the watchdog looks at this loop (L1).
                crate::watch::request();
            }
            After::Drop(job) => drop(job),
            After::AskSweep => crate::watch::request(),
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_live(&self) -> MutexGuard<'_, LiveSet> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attached thread: registers a pending crossing on this queue's loop (`event_loop`), which
    /// the watchdog then watches (L1).
    ///
    /// # Errors
    /// `RuntimeError` when the loop was already seen closed.
    pub(crate) fn join(
        self: &Arc<Self>,
        event_loop: &Bound<'_, PyAny>,
        crossing: Weak<dyn LiveCrossing>,
    ) -> PyResult<LiveKey> {
        let (key, joined) = {
            let mut live = self.lock_live();
            let key = live
                .insert(crossing)
                .ok_or(crate::BridgeError::LoopClosed)?;
            (key, live.joined())
        };
        if joined % 64 == 0 && crate::watch::on_loop_thread(event_loop) {
            // The loop thread making crossings is a sign of life: a loop busy making thousands
            // of them is not a silent one. (Another thread making them is not: the loop may be
            // closed under it.) Every 64th, for cost.
            self.vitals.beat();
        }
        crate::watch::request(); // L1: the watchdog looks at this loop while work is pending.
        Ok(key)
    }

    /// The crossing `key` settled (any thread; usually the loop thread).
    pub(crate) fn leave(&self, key: LiveKey) {
        self.lock_live().remove(key);
    }

    /// How many crossings are pending on the loop.
    pub(crate) fn live_len(&self) -> usize {
        self.lock_live().len()
    }

    /// The crossings pending on the loop, left registered (the exit hook, L2). Attached.
    pub(crate) fn live_crossings(&self) -> Vec<Arc<dyn LiveCrossing>> {
        let weak = self.lock_live().snapshot();
        weak.iter().filter_map(Weak::upgrade).collect()
    }

    /// Whether jobs wait for a drain.
    pub(crate) fn is_armed(&self) -> bool {
        self.lock_pending().armed
    }

    /// Whether the loop was seen closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The loop, unless it was collected. Attached.
    pub(crate) fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.event_loop.as_ref()?.bind(py).upgrade()
    }

    /// Watchdog thread, attached: the loop is closed (or collected). Every pending crossing
    /// ends (L1: tokens fire, `PyFuture`s fail with a clear error), and every queued job is
    /// dropped here, attached, without running: none may touch a closed loop.
    pub(crate) fn close(&self, py: Python<'_>) {
        let jobs = {
            let mut p = self.lock_pending();
            if self.closed.swap(true, Ordering::Relaxed) {
                return;
            }
            p.armed = false;
            std::mem::take(&mut p.jobs)
        };
        LOOPS_CLOSED.fetch_add(1, Ordering::Relaxed);
        // From here no crossing joins: each one pending now is ended exactly once, here.
        let crossings = self.lock_live().close();
        for crossing in crossings.iter().filter_map(Weak::upgrade) {
            crossing.loop_closed(py);
        }
        // After the crossings: a start job dropped now finds its `PyFuture` already failed
        // with the loop's error, and closes its coroutine (`task::Unstarted`).
        drop(jobs);
    }

    /// Watchdog thread, attached: drops the jobs that reached the queue after it was closed
    /// from threads that could not drop them.
    pub(crate) fn sweep(&self, _py: Python<'_>) {
        let jobs = {
            let mut p = self.lock_pending();
            p.armed = false;
            std::mem::take(&mut p.jobs)
        };
        drop(jobs);
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
        self.vitals.beat();
        loop {
            let batch = {
                let mut p = self.lock_pending();
                if self.closed.load(Ordering::Relaxed) {
                    return; // Never a job of a closed loop (a loop running after its close?).
                }
                if p.jobs.is_empty() {
                    p.armed = false;
                    return;
                }
                std::mem::take(&mut p.jobs)
            };
            JOBS.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (i, job) in batch.into_iter().enumerate() {
                if i % 256 == 255 {
                    self.vitals.beat(); // A long batch is a loop at work, not a stale one.
                }
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
            if let Some(drainer) = self.threadsafe.take() {
                std::mem::forget(drainer);
            }
            std::mem::forget(self.event_loop.take());
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
    /// Loop thread. Counted for the `atexit` hook's wait (L3), never refused: crossings in
    /// flight still settle during exit.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let _entry = crate::exit::counted();
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
                            if let (Some(drainer), Some(event_loop)) =
                                (q.threadsafe.get(), q.event_loop(py))
                            {
                                // A closed loop refuses the call: its jobs wait for the
                                // watchdog, which drops them when it finds the loop closed (L1).
                                let _ = event_loop.call_method1(
                                    intern!(py, "call_soon_threadsafe"),
                                    (drainer.clone_ref(py),),
                                );
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

impl LoopQueue {
    fn new(event_loop: &Bound<'_, PyAny>, wake: Wake) -> PyResult<Arc<Self>> {
        Ok(Arc::new(LoopQueue {
            pending: Mutex::new(Pending {
                jobs: Vec::new(),
                armed: false,
            }),
            wake,
            threadsafe: OnceLock::new(),
            event_loop: Some(PyWeakrefReference::new(event_loop)?.unbind()),
            live: Mutex::new(LiveSet::default()),
            closed: AtomicBool::new(false),
            vitals: Vitals::default(),
        }))
    }

    /// A queue woken through a socketpair, with the drainer to register with `add_reader` on
    /// the reading end's file descriptor. Attached.
    #[cfg(unix)]
    pub(crate) fn with_socket<'py>(
        event_loop: &Bound<'py, PyAny>,
    ) -> PyResult<(Arc<Self>, Bound<'py, Drainer>, std::os::fd::RawFd)> {
        use std::os::fd::AsRawFd;
        let py = event_loop.py();
        use std::os::unix::net::UnixStream;
        let os_err =
            |e: std::io::Error| pyo3::exceptions::PyOSError::new_err(format!("socketpair: {e}"));
        let (reader, writer) = UnixStream::pair().map_err(os_err)?;
        reader.set_nonblocking(true).map_err(os_err)?;
        writer.set_nonblocking(true).map_err(os_err)?;
        let fd = reader.as_raw_fd();
        // Every loop's drains must stop when the interpreter exits (`exit`).
        register_atexit_hook(py)?;
        let queue = Self::new(
            event_loop,
            Wake::Socket(writer, reader.try_clone().map_err(os_err)?),
        )?;
        let drainer = Bound::new(
            py,
            Drainer {
                queue: Arc::downgrade(&queue),
                reader: Some(reader),
            },
        )?;
        Ok((queue, drainer, fd))
    }

    /// A queue woken by the waker thread through `event_loop.call_soon_threadsafe`. Attached.
    pub(crate) fn with_threadsafe_wakeup(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Self>> {
        let py = event_loop.py();
        let queue = Self::new(event_loop, Wake::Threadsafe)?;
        let drainer = Py::new(
            py,
            Drainer {
                queue: Arc::downgrade(&queue),
                #[cfg(unix)]
                reader: None,
            },
        )?;
        // The waker thread attaches, and drains run: both stop when the interpreter exits.
        register_atexit_hook(py)?;
        let _ = queue.threadsafe.set(drainer);
        Ok(queue)
    }
}
