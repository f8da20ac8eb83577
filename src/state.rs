//! The life of one crossing, as plain data: no Python, no tokio (rules C3–C7).
//!
//! Both directions go through this machine. The *producer* computes the outcome and the
//! *consumer* waits for it:
//!
//! | direction                            | producer            | consumer           |
//! |--------------------------------------|---------------------|--------------------|
//! | Python awaits Rust (`future_into_py`) | the Rust future     | the asyncio future |
//! | Rust awaits Python (`into_future`)    | the asyncio task    | the `PyFuture`     |
//!
//! Each crossing owns one [`Crossing`] behind a mutex; whoever observes an [`Event`] feeds it in
//! and carries out the [`Action`] it returns. The mutex is never held while Python code runs.
//!
//! # Invariants
//! 1. A crossing reaches exactly one [`End`] and never leaves it (C7).
//! 2. [`Action::Deliver`] is returned at most once, and never once the consumer has cancelled
//!    (C7: a result is never set on a cancelled future).
//! 3. Once the consumer has cancelled, the crossing ends [`End::Cancelled`], whatever the
//!    producer returns (C3, cooperative mode). The interpreter's exit stopping a producer
//!    ([`Event::Shutdown`]) is such a cancel in cooperative mode; in [`Mode::Drop`] a value or
//!    error the producer returned all the same is delivered (L2).
//! 4. No hang: a `Finish` always ends the crossing; so does a `Cancel` in [`Mode::Drop`]; in
//!    [`Mode::Cooperative`] the `Finish` that follows the cancel (or the grace timer's stop)
//!    ends it (C7).
//! 5. A producer that ends *by* a cancellation ends the consumer cancelled, never failed (C5).
//! 6. The producer is told to stop at most once per cause, and never after the crossing ended
//!    in a delivery (work spawned from a crossing survives its success).

/// How the producer reacts when the consumer cancels (C3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The producer is stopped at once; the consumer is cancelled already.
    Drop,
    /// The producer is told and finishes on its own; the consumer waits for it and then ends
    /// cancelled. A grace timer may stop it.
    Cooperative,
}

/// How a producer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A value.
    Value,
    /// An ordinary error (or a panic): delivered as an exception.
    Error,
    /// A cancellation: a `CancelledError` raised or returned, or the producer was stopped (C5).
    Cancellation,
    /// The producer vanished without an outcome (runtime shut down, task lost).
    Abandoned,
}

/// Something that happened to a crossing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The producer is about to start (the asyncio task is created).
    Start,
    /// The consumer cancelled or went away: Python cancelled the future, or Rust dropped the
    /// `PyFuture`.
    Cancel,
    /// The producer's outcome reached the consumer's side.
    Finish(Outcome),
    /// The cooperative grace period ran out.
    GraceExpired,
    /// The consumer stopped waiting but lets the producer run (`PyFuture::detach`).
    Detach,
    /// The crossing's event loop closed.
    LoopClosed,
    /// The interpreter is exiting (L2): a running producer is stopped now, and the consumer,
    /// if its loop still runs, ends with the producer's finish: cancelled, unless (Drop mode)
    /// the producer returned a value or an error in a poll begun before the stop.
    Shutdown,
}

/// Where a crossing stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created; the producer has not started.
    Created,
    /// The producer runs and the consumer waits.
    Running,
    /// The consumer cancelled and the cooperative producer is finishing, or the exit stopped
    /// the producer (the only way here in Drop mode) and its finish is awaited.
    Cancelling,
    /// Nobody waits; the producer has not started yet and will run to its end.
    DetachedBeforeStart,
    /// Nobody waits; the producer runs to its end (its outcome is discarded).
    Detached,
    /// Terminal.
    Ended(End),
}

/// How a crossing ended (invariant 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The consumer received the producer's outcome.
    Delivered,
    /// The consumer ended cancelled.
    Cancelled,
    /// Detached: the producer ended and nobody took its outcome.
    Discarded,
    /// The loop closed first.
    Closed,
}

/// What the observer of an event must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Nothing.
    Nothing,
    /// Go on and start the producer.
    Run,
    /// Drop what is at hand without effect: an outcome nobody wants, or a producer that must
    /// never start (a coroutine is closed, not left un-awaited).
    Discard,
    /// Stop the producer now (fire the token, cancel the task).
    Stop,
    /// Tell the producer to stop and let it finish; the consumer keeps waiting.
    Signal,
    /// Hand the outcome to the consumer.
    Deliver(Outcome),
    /// End the consumer cancelled (`future.cancel(msg)`, never `set_exception`).
    EndCancelled,
}

/// One crossing's state.
#[derive(Clone, Debug)]
pub struct Crossing {
    mode: Mode,
    phase: Phase,
    /// The message of the first cancel that reached the producer, if it had one.
    reason: Option<String>,
}

impl Crossing {
    /// A crossing whose producer has not started.
    pub fn new(mode: Mode) -> Self {
        Crossing {
            mode,
            phase: Phase::Created,
            reason: None,
        }
    }

    /// A crossing whose producer already runs (a spawned Rust future).
    pub fn running(mode: Mode) -> Self {
        Crossing {
            phase: Phase::Running,
            ..Crossing::new(mode)
        }
    }

    /// How the producer reacts to a cancel.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Where the crossing stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The cancel message recorded with the first [`Event::Cancel`].
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether the crossing is being cancelled or has ended cancelled or closed (by either
    /// side; the producer may never have been told, if it ended first or never started).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self.phase,
            Phase::Cancelling | Phase::Ended(End::Cancelled | End::Closed)
        )
    }

    /// [`Event::Cancel`] with the message Python passed to `cancel(msg)`.
    pub fn cancel(&mut self, reason: Option<String>) -> Action {
        let action = self.on(Event::Cancel);
        if matches!(action, Action::Stop | Action::Signal) && self.reason.is_none() {
            self.reason = reason;
        }
        action
    }

    /// [`Event::Shutdown`], recording `reason` (the message the consumer ends cancelled with)
    /// unless a cancel recorded one first.
    pub fn shutdown(&mut self, reason: &str) -> Action {
        let action = self.on(Event::Shutdown);
        if action == Action::Stop && self.reason.is_none() {
            self.reason = Some(reason.to_owned());
        }
        action
    }

    /// Feeds one event in and says what to do.
    pub fn on(&mut self, event: Event) -> Action {
        use Action::*;
        use Event::*;
        use Phase::*;
        let (phase, action) = match (self.phase, event) {
            // Terminal: nothing changes (invariant 1). What arrives late is dropped quietly.
            (Ended(end), Start | Finish(_)) => (Ended(end), Discard),
            (Ended(end), _) => (Ended(end), Nothing),

            // The producer starts at most once.
            (Created, Start) => (Running, Run),
            (DetachedBeforeStart, Start) => (Detached, Run),
            (Running | Cancelling | Detached, Start) => (self.phase, Nothing),

            // Cancelled before the producer started: it never starts (C4).
            (Created, Cancel) => (Ended(End::Cancelled), Nothing),
            (Running, Cancel) => match self.mode {
                Mode::Drop => (Ended(End::Cancelled), Stop),
                Mode::Cooperative => (Cancelling, Signal),
            },
            // In Drop mode only the exit leads here: the producer is stopped already, and the
            // consumer's own cancel ends the crossing (invariant 4).
            (Cancelling, Cancel) if self.mode == Mode::Drop => (Ended(End::Cancelled), Nothing),
            (Cancelling | DetachedBeforeStart | Detached, Cancel) => (self.phase, Nothing),

            // Invariants 2, 3 and 5.
            (Created | Running, Finish(Outcome::Cancellation)) => {
                (Ended(End::Cancelled), EndCancelled)
            }
            (Created | Running, Finish(outcome)) => (Ended(End::Delivered), Deliver(outcome)),
            // In Drop mode only the exit leads to `Cancelling` (the consumer never cancelled):
            // a value or an error that the producer returned as the exit stopped it is still
            // its outcome (L2: the exit never turns a computed result into a cancellation).
            (Cancelling, Finish(outcome @ (Outcome::Value | Outcome::Error)))
                if self.mode == Mode::Drop =>
            {
                (Ended(End::Delivered), Deliver(outcome))
            }
            (Cancelling, Finish(_)) => (Ended(End::Cancelled), EndCancelled),
            (DetachedBeforeStart | Detached, Finish(_)) => (Ended(End::Discarded), Discard),

            // Stop again on a repeated expiry: the producer's `drive` sends it once.
            (Cancelling, GraceExpired) => (Cancelling, Stop),
            (_, GraceExpired) => (self.phase, Nothing),

            (Created, Detach) => (DetachedBeforeStart, Nothing),
            (Running, Detach) => (Detached, Nothing),
            (Cancelling | DetachedBeforeStart | Detached, Detach) => (self.phase, Nothing),

            (Created | DetachedBeforeStart | Detached, LoopClosed) => (Ended(End::Closed), Discard),
            (Running | Cancelling, LoopClosed) => (Ended(End::Closed), Stop),

            // Exit stops what still runs for a waiting consumer, as a cancel would in Drop mode,
            // but the consumer ends only with the finish (it may have a waiter of its own). A
            // producer that never started never will; detached ones are not the bridge's.
            (Created, Shutdown) => (Ended(End::Cancelled), Nothing),
            (Running | Cancelling, Shutdown) => (Cancelling, Stop),
            (DetachedBeforeStart | Detached, Shutdown) => (self.phase, Nothing),
        };
        #[cfg(bridge_mutants)]
        let (phase, action) = mutants::apply(self, event, phase, action);
        self.phase = phase;
        action
    }
}

/// Deliberately broken variants, compiled only into the property tests (`--cfg bridge_mutants`
/// is set by `proptests/build.rs`), which prove that the proptest catches each one.
#[cfg(bridge_mutants)]
pub mod mutants {
    use super::*;
    use std::cell::Cell;

    /// A broken variant.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mutant {
        /// A finish after a cooperative cancel delivers the value (breaks invariant 3).
        DeliverAfterCancel,
        /// A cancel before start leaves the crossing `Created`, so it starts anyway (C4).
        StartAfterCancel,
        /// A late finish re-delivers on an ended crossing (breaks invariant 1).
        DeliverTwice,
        /// A returned cancellation is delivered as an ordinary error (breaks invariant 5).
        CancellationAsError,
    }

    thread_local! {
        static ACTIVE: Cell<Option<Mutant>> = const { Cell::new(None) };
    }

    /// Runs `f` with `mutant` active on this thread.
    pub fn with<R>(mutant: Option<Mutant>, f: impl FnOnce() -> R) -> R {
        let old = ACTIVE.with(|a| a.replace(mutant));
        let r = f();
        ACTIVE.with(|a| a.set(old));
        r
    }

    pub(super) fn apply(
        c: &Crossing,
        event: Event,
        phase: Phase,
        action: Action,
    ) -> (Phase, Action) {
        match (ACTIVE.with(Cell::get), c.phase, event) {
            (Some(Mutant::DeliverAfterCancel), Phase::Cancelling, Event::Finish(o)) => {
                (Phase::Ended(End::Delivered), Action::Deliver(o))
            }
            (Some(Mutant::StartAfterCancel), Phase::Created, Event::Cancel) => {
                (Phase::Created, Action::Nothing)
            }
            (Some(Mutant::DeliverTwice), Phase::Ended(End::Delivered), Event::Finish(o)) => {
                (phase, Action::Deliver(o))
            }
            (
                Some(Mutant::CancellationAsError),
                Phase::Running,
                Event::Finish(Outcome::Cancellation),
            ) => (
                Phase::Ended(End::Delivered),
                Action::Deliver(Outcome::Error),
            ),
            _ => (phase, action),
        }
    }
}
