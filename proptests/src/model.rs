//! The reference model: what a crossing should do, written from the rules as facts about the
//! two sides rather than as a transition table. It shares no code with `state.rs`; it only
//! speaks the machine's vocabulary ([`Action`], [`Phase`], [`End`]) so the two can be compared.

use crate::scenario::{Step, EXIT_REASON};
use crate::state::{Action, End, Mode, Outcome, Phase};

/// What is known about one crossing.
#[derive(Clone, Debug)]
pub struct Model {
    mode: Mode,
    /// The producer has started (or was made running).
    started: bool,
    /// The consumer cancelled while it was still waiting.
    consumer_cancelled: bool,
    /// The consumer stopped waiting and let the producer run on.
    detached: bool,
    /// The interpreter's exit stopped the producer.
    shut_down: bool,
    /// How many outcomes reached the consumer.
    delivered: u32,
    /// How the crossing ended, once it has.
    ended: Option<End>,
    /// The message of the cancel that told the producer to stop.
    reason: Option<String>,
}

impl Model {
    /// A crossing whose producer runs already (`started`) or not yet.
    pub fn new(mode: Mode, started: bool) -> Self {
        Model {
            mode,
            started,
            consumer_cancelled: false,
            detached: false,
            shut_down: false,
            delivered: 0,
            ended: None,
            reason: None,
        }
    }

    /// Someone still waits for the outcome.
    fn consumer_waits(&self) -> bool {
        self.ended.is_none() && !self.detached && !self.consumer_cancelled
    }

    fn end(&mut self, how: End) {
        assert!(self.ended.is_none(), "model bug: ends twice");
        self.ended = Some(how);
    }

    /// The action the machine must answer `step` with; updates the facts.
    pub fn step(&mut self, step: &Step) -> Action {
        match step {
            Step::Start => self.start(),
            Step::Cancel(reason) => self.cancel(reason.map(str::to_owned)),
            Step::CancelEvent => self.cancel(None),
            Step::Finish(outcome) => self.finish(*outcome),
            Step::GraceExpired => self.grace_expired(),
            Step::Detach => self.detach(),
            Step::LoopClosed => self.loop_closed(),
            Step::Shutdown => self.shutdown(),
        }
    }

    /// A producer starts once, and never once the crossing has ended (a cancel before the
    /// start ended it: the coroutine is closed, not left un-awaited, C4).
    fn start(&mut self) -> Action {
        if self.ended.is_some() {
            Action::Discard
        } else if self.started {
            Action::Nothing
        } else {
            self.started = true;
            Action::Run
        }
    }

    /// Only a waiting consumer can cancel. A producer that never started is never told; a
    /// running one is stopped (Drop) or signalled (Cooperative), and the reason is kept.
    fn cancel(&mut self, reason: Option<String>) -> Action {
        // After the exit stopped a Drop-mode producer, the consumer's own cancel ends it.
        if self.ended.is_none() && self.shut_down && self.mode == Mode::Drop {
            self.end(End::Cancelled);
            return Action::Nothing;
        }
        if !self.consumer_waits() {
            return Action::Nothing;
        }
        self.consumer_cancelled = true;
        if !self.started {
            self.end(End::Cancelled);
            return Action::Nothing;
        }
        self.reason = reason;
        match self.mode {
            Mode::Drop => {
                self.end(End::Cancelled);
                Action::Stop
            }
            Mode::Cooperative => Action::Signal,
        }
    }

    /// A finish always ends a live crossing: discarded when nobody waits, cancelled when the
    /// consumer cancelled or the producer ended by a cancellation (C5), delivered otherwise.
    fn finish(&mut self, outcome: Outcome) -> Action {
        if self.ended.is_some() {
            return Action::Discard;
        }
        let exit_stopped_drop = self.shut_down && self.mode == Mode::Drop;
        if self.detached {
            self.end(End::Discarded);
            Action::Discard
        } else if exit_stopped_drop && matches!(outcome, Outcome::Value | Outcome::Error) {
            // L2: the exit stopped a Drop-mode producer (its consumer never cancelled, or it
            // would have ended), which returned an outcome all the same: that is delivered.
            self.delivered += 1;
            self.end(End::Delivered);
            Action::Deliver(outcome)
        } else if self.consumer_cancelled || outcome == Outcome::Cancellation {
            self.end(End::Cancelled);
            Action::EndCancelled
        } else {
            self.delivered += 1;
            self.end(End::Delivered);
            Action::Deliver(outcome)
        }
    }

    /// The grace timer stops a cooperative producer that was signalled and has not finished.
    fn grace_expired(&mut self) -> Action {
        if self.ended.is_none() && self.consumer_cancelled {
            Action::Stop
        } else {
            Action::Nothing
        }
    }

    /// Only a waiting consumer can detach.
    fn detach(&mut self) -> Action {
        if self.consumer_waits() {
            self.detached = true;
        }
        Action::Nothing
    }

    /// The loop closing ends a live crossing. A producer someone waits for is stopped; one that
    /// never started, or that nobody waits for, is discarded.
    fn loop_closed(&mut self) -> Action {
        if self.ended.is_some() {
            return Action::Nothing;
        }
        let stop = self.started && !self.detached;
        self.end(End::Closed);
        if stop {
            Action::Stop
        } else {
            Action::Discard
        }
    }

    /// The interpreter exiting stops a producer someone waits for, in either mode, and the
    /// consumer then ends with the finish: cancelled, unless a Drop-mode producer returned a
    /// value or an error all the same (`finish`); one that never started never will.
    /// Nobody stops what was detached. The exit's message becomes the reason unless a cancel
    /// gave one.
    fn shutdown(&mut self) -> Action {
        if self.ended.is_some() || self.detached {
            return Action::Nothing;
        }
        self.consumer_cancelled = true;
        if !self.started {
            self.end(End::Cancelled);
            return Action::Nothing;
        }
        self.shut_down = true;
        if self.reason.is_none() {
            self.reason = Some(EXIT_REASON.to_owned());
        }
        Action::Stop
    }

    /// Where the machine should stand.
    pub fn phase(&self) -> Phase {
        if let Some(end) = self.ended {
            Phase::Ended(end)
        } else if self.detached && self.started {
            Phase::Detached
        } else if self.detached {
            Phase::DetachedBeforeStart
        } else if self.consumer_cancelled {
            Phase::Cancelling
        } else if self.started {
            Phase::Running
        } else {
            Phase::Created
        }
    }

    /// The reason the machine should report.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether the machine should say it is cancelled: the consumer cancelled and the crossing
    /// is not over otherwise, or it ended cancelled or by the loop closing.
    pub fn is_cancelled(&self) -> bool {
        match self.ended {
            Some(end) => matches!(end, End::Cancelled | End::Closed),
            None => self.consumer_cancelled,
        }
    }

    /// How many outcomes reached the consumer (at most one).
    pub fn delivered(&self) -> u32 {
        self.delivered
    }
}
