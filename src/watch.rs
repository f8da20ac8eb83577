//! Noticing that an event loop closed while crossings were pending on it (rule L1).
//!
//! asyncio has no close hook (and uvloop allows no monkeypatching), so the bridge watches:
//! - While crossings are pending on a loop, the loop thread runs a cheap **heartbeat**
//!   (`loop.call_later`, every [`HEARTBEAT`]) that records a sign of life; so does every drain.
//! - The bridge's **watchdog** thread (never a runtime thread) looks at the signs every
//!   [`PERIOD`] without attaching. Only for a loop with work pending and no sign of life for
//!   [`STALE`] does it attach and ask `loop.is_closed()`. A closed (or collected) loop has its
//!   queue closed ([`LoopQueue::close`]): pending crossings end, queued jobs are dropped.
//!
//! A healthy loop costs one timer callback per [`HEARTBEAT`] while work is pending, and the
//! watchdog never takes the GIL from it. A loop that is merely blocked, or stopped between two
//! `run_until_complete` calls, costs one attach per [`PERIOD`] while it stays so.
//!
//! # No missed loop
//! The watchdog sleeps (on a condition variable) only after a scan that found nothing to
//! watch, and it announces that it is going idle *before* that scan. A loop that gains work
//! announces it *after* recording it ([`keep_alive`], [`request`]). With a `SeqCst` fence on
//! each side, either the scan sees the work or the announcement sees the watchdog idle and
//! wakes it.
//!
//! # No double heartbeat
//! `beating` is true while a heartbeat is scheduled. The heartbeat clears it when no crossing
//! is pending, and then looks at the count again under the live-set lock; a crossing joining
//! counts itself under that lock and then sets `beating`. Whoever swaps it from false to true
//! schedules the next beat; the other does nothing.

use crate::exit::attach_unless_exiting;
use crate::queue::LoopQueue;
use pyo3::intern;
use pyo3::prelude::*;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How often a loop with pending crossings shows a sign of life.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long without a sign of life before the watchdog asks the loop whether it is closed.
pub const STALE: Duration = Duration::from_millis(400);
/// How often the watchdog looks, while any loop has work pending.
pub const PERIOD: Duration = Duration::from_millis(200);

/// A loop's signs of life, kept in its queue.
#[derive(Default)]
pub(crate) struct Vitals {
    /// A heartbeat is scheduled (or being scheduled) on the loop.
    beating: AtomicBool,
    /// The last sign of life, in milliseconds since [`epoch`].
    last_sign: AtomicU64,
}

impl Vitals {
    /// Loop thread: the loop runs.
    pub(crate) fn beat(&self) {
        self.last_sign.store(now_ms(), Ordering::Relaxed);
    }

    /// Any thread: a drain is owed from now on (a wakeup was just sent). Staleness counts from
    /// here, so work that arrives after a long quiet spell gets a full [`STALE`] period.
    pub(crate) fn wakeup_owed(&self) {
        self.beat();
        if !self.beating.load(Ordering::Relaxed) {
            // No heartbeat keeps the watchdog looking at this loop: make sure it does.
            request();
        }
    }

    fn silent_for(&self, now: u64) -> Duration {
        Duration::from_millis(now.saturating_sub(self.last_sign.load(Ordering::Relaxed)))
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Attached thread, after a crossing joined `queue`: makes sure a heartbeat runs on
/// `event_loop` and the watchdog looks at it. On the loop thread the first beat is scheduled
/// at once; elsewhere it is a job for the loop thread.
pub(crate) fn keep_alive(queue: &Arc<LoopQueue>, event_loop: &Bound<'_, PyAny>) {
    let vitals = &queue.vitals;
    if vitals.beating.load(Ordering::Relaxed) || vitals.beating.swap(true, Ordering::SeqCst) {
        return; // "No double heartbeat".
    }
    vitals.beat(); // The first beat is due a HEARTBEAT from now.
    if on_loop_thread(event_loop) {
        schedule_first(queue, event_loop);
    } else {
        let weak = Arc::downgrade(queue);
        queue.push(Box::new(move |py| {
            if let (Some(q), Ok(running)) = (weak.upgrade(), crate::py::running_loop_or_none(py)) {
                schedule_first(&q, &running);
            }
        }));
    }
    request();
}

/// Whether `event_loop` is the loop running in this (attached) thread.
pub(crate) fn on_loop_thread(event_loop: &Bound<'_, PyAny>) -> bool {
    crate::py::running_loop_or_none(event_loop.py()).is_ok_and(|running| running.is(event_loop))
}

/// Loop thread: schedules the first beat, in a fresh empty context so that no caller's
/// context values stay alive with the timer. On failure `beating` stays set: the watchdog
/// keeps looking at this loop, which will go stale and be asked whether it is closed.
fn schedule_first(queue: &Arc<LoopQueue>, event_loop: &Bound<'_, PyAny>) {
    let py = event_loop.py();
    let scheduled = (|| -> PyResult<()> {
        let heartbeat = Heartbeat {
            queue: Arc::downgrade(queue),
        };
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item(
            intern!(py, "context"),
            crate::py::context_type(py)?.call0()?,
        )?;
        event_loop.call_method(
            intern!(py, "call_later"),
            (HEARTBEAT.as_secs_f64(), heartbeat),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    drop(scheduled); // See the doc comment: failure is the watchdog's to notice.
}

/// The heartbeat callback. Loop thread, scheduled with `loop.call_later`.
#[pyclass(frozen, module = "pyo3_async_bridge")]
struct Heartbeat {
    queue: Weak<LoopQueue>,
}

#[pymethods]
impl Heartbeat {
    fn __call__(slf: &Bound<'_, Self>) {
        // L3: counted like any bridge frame, and no beat once the interpreter exits (a frame
        // that runs Python code is one finalization could kill a daemon loop thread in).
        let Ok(_entry) = crate::exit::enter() else {
            return;
        };
        let Some(queue) = slf.get().queue.upgrade() else {
            return;
        };
        let vitals = &queue.vitals;
        vitals.beat();
        if queue.live_len() == 0 {
            vitals.beating.store(false, Ordering::SeqCst);
            // "No double heartbeat": a crossing that joined meanwhile either saw `false` and
            // scheduled its own beat (the swap below then fails), or did not (then this one goes
            // on).
            if queue.live_len() == 0 || vitals.beating.swap(true, Ordering::SeqCst) {
                return;
            }
            // Beating again: a watchdog scan in between may have found this loop quiet and
            // gone idle ("No missed loop"; only possible without the GIL).
            request();
        }
        let py = slf.py();
        if let Ok(running) = crate::py::running_loop_or_none(py) {
            // Inherits this callback's (empty) context. A failure leaves `beating` set; see
            // `schedule_first`.
            let _ = running.call_method1(intern!(py, "call_later"), (HEARTBEAT.as_secs_f64(), slf));
        }
    }
}

/// The watchdog's wake-up: whether a request came while it slept, and whether it sleeps.
struct Alarm {
    requested: Mutex<bool>,
    cond: Condvar,
    idle: AtomicBool,
}

fn alarm() -> &'static Alarm {
    static ALARM: OnceLock<Alarm> = OnceLock::new();
    ALARM.get_or_init(|| {
        std::thread::Builder::new()
            .name("pyo3-async-bridge-watchdog".into())
            .spawn(watchdog)
            .expect("failed to spawn the pyo3-async-bridge watchdog thread");
        Alarm {
            requested: Mutex::new(false),
            cond: Condvar::new(),
            // It starts asleep: the first request must wake it.
            idle: AtomicBool::new(true),
        }
    })
}

/// Any thread, never attaches: some loop has work pending (or a closed loop has jobs to drop);
/// wakes the watchdog if it sleeps. Cheap when it is awake: a fence and a load.
pub(crate) fn request() {
    let alarm = alarm();
    fence(Ordering::SeqCst); // "No missed loop": the work recorded before this is visible.
    if alarm.idle.load(Ordering::SeqCst) {
        *alarm
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        alarm.cond.notify_one();
    }
}

/// What the watchdog makes of one queue, without attaching.
enum Verdict {
    /// No work pending: nothing to watch.
    Quiet,
    /// Work pending, and the loop showed a sign of life lately.
    Watch,
    /// Attach and look: the loop has been silent too long, or it is closed with jobs to drop.
    Suspect,
}

fn verdict(queue: &LoopQueue, now: u64) -> Verdict {
    let armed = queue.is_armed();
    if queue.is_closed() {
        return if armed {
            Verdict::Suspect
        } else {
            Verdict::Quiet
        };
    }
    if !armed && !queue.vitals.beating.load(Ordering::SeqCst) {
        Verdict::Quiet
    } else if queue.vitals.silent_for(now) >= STALE {
        Verdict::Suspect
    } else {
        Verdict::Watch
    }
}

/// Watchdog thread, attached: a suspect queue's loop is asked whether it is closed.
fn look(py: Python<'_>, queue: &LoopQueue) {
    if queue.is_closed() {
        return queue.sweep(py);
    }
    let closed = match queue.event_loop(py) {
        None => true, // Collected: as good as closed.
        Some(l) => l
            .call_method0(intern!(py, "is_closed"))
            .and_then(|c| c.is_truthy())
            .unwrap_or(false),
    };
    if closed {
        queue.close(py);
    }
}

/// The watchdog thread's body: the bridge's own thread, which attaches only to look at a
/// suspect loop, and never once the interpreter exits (L3).
fn watchdog() {
    crate::attach::mark_watchdog_thread();
    let alarm = alarm();
    loop {
        // Sleep until some loop has work pending.
        {
            let mut requested = alarm
                .requested
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while !*requested {
                requested = alarm
                    .cond
                    .wait(requested)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *requested = false;
        }
        alarm.idle.store(false, Ordering::SeqCst);
        // Look every PERIOD until a scan finds nothing to watch.
        loop {
            std::thread::sleep(PERIOD);
            let now = now_ms();
            let mut suspects = Vec::new();
            let mut watching = false;
            crate::registry::for_each_queue(|q| match verdict(q, now) {
                Verdict::Quiet => {}
                Verdict::Watch => watching = true,
                Verdict::Suspect => {
                    watching = true;
                    suspects.push(Arc::clone(q));
                }
            });
            if !suspects.is_empty() {
                // The queues are released attached: a queue may hold the last references.
                let looked = attach_unless_exiting(|py| {
                    for q in suspects.drain(..) {
                        look(py, &q);
                    }
                });
                if looked.is_none() {
                    // The interpreter exits: the watchdog is done (L3). Leak the handles
                    // rather than release Python references unattached.
                    std::mem::forget(suspects);
                    return;
                }
            }
            if !watching {
                // "No missed loop": idle first, then one more scan.
                alarm.idle.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                let mut again = false;
                crate::registry::for_each_queue(|q| {
                    again |= !matches!(verdict(q, now_ms()), Verdict::Quiet);
                });
                if !again {
                    break;
                }
                alarm.idle.store(false, Ordering::SeqCst);
            }
        }
    }
}
