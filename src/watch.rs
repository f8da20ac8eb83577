//! Noticing that an event loop closed while crossings were pending on it (rule L1).
//!
//! asyncio has no close hook (and uvloop allows no monkeypatching), so the bridge watches,
//! without scheduling anything on a healthy loop:
//! - Every drain of a loop's queue is a **sign of life** (so is every 64th crossing the loop
//!   thread makes). A loop at work shows them all the time, at no extra cost.
//! - The bridge's **watchdog** thread (never a runtime thread) looks at the signs every
//!   [`PERIOD`] without attaching. A loop with work pending and no sign of life for [`STALE`]
//!   gets a **ping**: an empty job through its queue, which wakes it like any delivery (a byte
//!   into its socket). A live loop drains it at once, which is a sign of life.
//! - Only a loop that leaves its ping undrained for [`PING_WAIT`] makes the watchdog attach and
//!   ask `loop.is_closed()`. A closed (or collected) loop has its queue closed
//!   ([`LoopQueue::close`]): pending crossings end, queued jobs are dropped.
//!
//! So a closed loop is found within `STALE + PING_WAIT + 2 × PERIOD` (0.85 s) of its last sign
//! of life. A healthy loop costs nothing while it works, and one empty drain per `STALE` while
//! it idles with crossings pending; the watchdog never takes the GIL from it. A loop that is
//! blocked, or stopped between two `run_until_complete` calls, costs one attach per ping cycle.
//!
//! # No missed loop
//! The watchdog sleeps (on a condition variable) only after a scan that found nothing to
//! watch, and it announces that it is going idle *before* that scan. Work for a loop is
//! recorded (a crossing joins, a wakeup is owed) *before* [`request`] is called. With a `SeqCst`
//! fence on each side, either the scan sees the work or `request` sees the watchdog idle and
//! wakes it.

use crate::exit::attach_unless_exiting;
use crate::queue::LoopQueue;
use pyo3::intern;
use pyo3::prelude::*;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long without a sign of life before a loop with work pending is pinged.
pub const STALE: Duration = Duration::from_millis(250);
/// How long a ping may stay undrained before the watchdog asks the loop whether it is closed.
pub const PING_WAIT: Duration = Duration::from_millis(200);
/// How often the watchdog looks, while any loop has work pending.
pub const PERIOD: Duration = Duration::from_millis(200);

/// A loop's signs of life, kept in its queue. Times are milliseconds since [`epoch`].
#[derive(Default)]
pub(crate) struct Vitals {
    /// The last sign of life.
    last_sign: AtomicU64,
    /// When the outstanding ping was sent; 0 when none is.
    pinged_at: AtomicU64,
}

impl Vitals {
    /// Loop thread: the loop runs.
    pub(crate) fn beat(&self) {
        self.last_sign.store(now_ms(), Ordering::Relaxed);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], never 0 (0 means "no ping outstanding").
fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn since(then: u64, now: u64) -> Duration {
    Duration::from_millis(now.saturating_sub(then))
}

/// Whether `event_loop` is the loop running in this (attached) thread.
pub(crate) fn on_loop_thread(event_loop: &Bound<'_, PyAny>) -> bool {
    crate::py::running_loop_or_none(event_loop.py()).is_ok_and(|running| running.is(event_loop))
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
    /// Work pending, and the loop showed a sign of life lately (or answers a ping soon).
    Watch,
    /// Work pending and silent: send a ping.
    Ping,
    /// Attach and look: the ping went unanswered, or the loop is closed with jobs to drop.
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
    if !armed && queue.live_len() == 0 {
        return Verdict::Quiet;
    }
    let vitals = &queue.vitals;
    let last_sign = vitals.last_sign.load(Ordering::Relaxed);
    let pinged_at = vitals.pinged_at.load(Ordering::Relaxed);
    if since(last_sign, now) < STALE {
        Verdict::Watch
    } else if pinged_at <= last_sign {
        Verdict::Ping // none outstanding: the last one was answered, or none was sent
    } else if since(pinged_at, now) < PING_WAIT {
        Verdict::Watch
    } else {
        Verdict::Suspect
    }
}

/// Watchdog thread, not attached: wakes a silent loop with an empty job. Its drain, if the
/// loop lives, is the sign of life.
fn ping(queue: &Arc<LoopQueue>, now: u64) {
    queue.vitals.pinged_at.store(now, Ordering::Relaxed);
    queue.push(Box::new(|_py| {}));
}

/// Watchdog thread, attached: a suspect queue's loop is asked whether it is closed. An open
/// one (blocked, or stopped) is pinged again on the next round.
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
    } else {
        queue.vitals.pinged_at.store(0, Ordering::Relaxed);
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
            if crate::exit::is_exiting() {
                return; // L3: not even a ping (a drain it causes is a bridge frame) from now on.
            }
            let now = now_ms();
            let mut pings = Vec::new();
            let mut suspects = Vec::new();
            let mut watching = false;
            crate::registry::for_each_queue(|q| match verdict(q, now) {
                Verdict::Quiet => {}
                Verdict::Watch => watching = true,
                Verdict::Ping => {
                    watching = true;
                    pings.push(Arc::clone(q));
                }
                Verdict::Suspect => {
                    watching = true;
                    suspects.push(Arc::clone(q));
                }
            });
            // Outside the registry lock: a push may wake the loop (a socket write).
            for q in &pings {
                ping(q, now);
            }
            // The registry holds every queue, so these handles are not the last ones (should one
            // be, its `Drop` leaks its Python references rather than release them here).
            drop(pings);
            // Suspects are released attached.
            if !suspects.is_empty() {
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
