//! The numbered invariants of `state.rs`'s module docs, checked on what the machine does,
//! step by step, without the model.

use crate::scenario::{Ctor, Scenario, Step, EXIT_REASON};
use crate::state::{Action, End, Mode, Outcome, Phase};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// What one step did to the machine.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The step fed in.
    pub step: &'a Step,
    /// The phase before it.
    pub before: Phase,
    /// The machine's answer.
    pub action: Action,
    /// The phase after it.
    pub after: Phase,
    /// [`Crossing::reason`](crate::state::Crossing::reason) after it.
    pub reason: Option<&'a str>,
}

/// The history the invariants need.
#[derive(Clone, Debug)]
pub struct Rules {
    mode: Mode,
    ctor: Ctor,
    /// The first end the machine reached.
    end: Option<End>,
    deliveries: u32,
    runs: u32,
    /// A cancel reached a consumer that was waiting (or already cancelling).
    cancelled: bool,
    /// That cancel came before the producer started.
    cancelled_before_start: bool,
    stops_by_cancel: u32,
    stops_by_loop: u32,
    /// The exit stopped a running Drop-mode producer whose consumer had not cancelled.
    exit_stopped: bool,
    /// The message of the first cancel answered with `Stop` or `Signal`.
    reason: Option<String>,
}

/// A cancel by the consumer, or the interpreter's exit, which ends a waiting consumer the same
/// way.
fn is_cancel(step: &Step) -> bool {
    matches!(step, Step::Cancel(_) | Step::CancelEvent | Step::Shutdown)
}

fn tells_producer(action: Action) -> bool {
    matches!(action, Action::Stop | Action::Signal)
}

impl Rules {
    /// Nothing has happened yet to the machine `scenario` makes.
    pub fn new(scenario: &Scenario) -> Self {
        Rules {
            mode: scenario.mode,
            ctor: scenario.ctor,
            end: None,
            deliveries: 0,
            runs: 0,
            cancelled: false,
            cancelled_before_start: false,
            stops_by_cancel: 0,
            stops_by_loop: 0,
            exit_stopped: false,
            reason: None,
        }
    }

    /// Checks one step against every invariant, then records it.
    pub fn observe(&mut self, o: Observed<'_>) -> Result<(), TestCaseError> {
        let live_before = !matches!(o.before, Phase::Ended(_));
        let waiting_before = matches!(
            o.before,
            Phase::Created | Phase::Running | Phase::Cancelling
        );
        let started_before = self.ctor == Ctor::Running || self.runs > 0;

        // 1. Exactly one end, never left (C7).
        if let Some(end) = self.end {
            prop_assert_eq!(
                o.after,
                Phase::Ended(end),
                "invariant 1 (C7): left its end {:?}",
                end
            );
        }
        if let Phase::Ended(end) = o.after {
            self.end.get_or_insert(end);
        }

        // 2. At most one delivery, never after the consumer cancelled (C7).
        if let Action::Deliver(_) = o.action {
            self.deliveries += 1;
            prop_assert_eq!(self.deliveries, 1, "invariant 2 (C7): delivered twice");
            prop_assert!(
                !self.cancelled,
                "invariant 2 (C7): delivered after a cancel"
            );
        }

        // 3. Once the consumer cancelled, the end is Cancelled whatever the producer returns
        //    (C3); only the loop closing may end it otherwise.
        // The exit stopping a running Drop-mode producer cancels nobody: the consumer still
        // waits, and gets what the producer returned (a value or an error) or ends cancelled
        // (L2). Checked here; any other exit counts as a cancel.
        let exit_stops_drop = o.step == &Step::Shutdown
            && self.mode == Mode::Drop
            && (o.before == Phase::Running || self.exit_stopped)
            && !self.cancelled;
        if exit_stops_drop {
            self.exit_stopped = true;
        }
        if self.exit_stopped && !self.cancelled && live_before {
            if let Step::Finish(outcome) = o.step {
                let expected = match outcome {
                    Outcome::Value | Outcome::Error => {
                        (Action::Deliver(*outcome), Phase::Ended(End::Delivered))
                    }
                    Outcome::Cancellation | Outcome::Abandoned => {
                        (Action::EndCancelled, Phase::Ended(End::Cancelled))
                    }
                };
                prop_assert_eq!(
                    (o.action, o.after),
                    expected,
                    "L2: a finish after the exit stopped a Drop-mode producer"
                );
            }
        }
        if is_cancel(o.step) && waiting_before && !exit_stops_drop {
            if !started_before && !self.cancelled {
                self.cancelled_before_start = true;
            }
            self.cancelled = true;
        }
        if self.cancelled {
            if let Phase::Ended(end) = o.after {
                prop_assert!(
                    matches!(end, End::Cancelled | End::Closed),
                    "invariant 3 (C3): ended {:?} after a cancel",
                    end
                );
            }
            if matches!(o.step, Step::Finish(_)) && live_before {
                prop_assert_eq!(
                    (o.action, o.after),
                    (Action::EndCancelled, Phase::Ended(End::Cancelled)),
                    "invariant 3 (C3): a finish after a cancel"
                );
            }
        }

        // 4. No hang: a finish always ends; so does a cancel in Drop mode (C7).
        if matches!(o.step, Step::Finish(_)) {
            prop_assert!(
                matches!(o.after, Phase::Ended(_)),
                "invariant 4 (C7): a finish left {:?}",
                o.after
            );
        }
        if matches!(o.step, Step::Cancel(_) | Step::CancelEvent)
            && self.mode == Mode::Drop
            && !matches!(o.before, Phase::Detached | Phase::DetachedBeforeStart)
        {
            prop_assert!(
                matches!(o.after, Phase::Ended(_)),
                "invariant 4 (C7): a Drop-mode cancel left {:?}",
                o.after
            );
        }
        if o.step == &Step::GraceExpired && o.before == Phase::Cancelling {
            prop_assert_eq!(
                o.action,
                Action::Stop,
                "invariant 4 (C7): grace expired without a stop"
            );
        }

        // 5. A producer that ends by a cancellation ends the consumer cancelled (C5).
        if o.step == &Step::Finish(Outcome::Cancellation) {
            prop_assert!(
                !matches!(o.action, Action::Deliver(_)),
                "invariant 5 (C5): a cancellation delivered as {:?}",
                o.action
            );
            if waiting_before {
                prop_assert_eq!(
                    (o.action, o.after),
                    (Action::EndCancelled, Phase::Ended(End::Cancelled)),
                    "invariant 5 (C5): a cancellation outcome"
                );
            }
        }

        // 6. The producer is told to stop at most once per cause, never after a delivery.
        if tells_producer(o.action) {
            prop_assert_ne!(
                o.before,
                Phase::Ended(End::Delivered),
                "invariant 6: told to stop after a delivery"
            );
            match o.step {
                Step::Cancel(_) | Step::CancelEvent => {
                    self.stops_by_cancel += 1;
                    prop_assert_eq!(
                        self.stops_by_cancel,
                        1,
                        "invariant 6: a second cancel stopped it"
                    );
                    if self.reason.is_none() {
                        if let Step::Cancel(Some(msg)) = o.step {
                            self.reason = Some((*msg).to_owned());
                        }
                    }
                }
                Step::LoopClosed => {
                    self.stops_by_loop += 1;
                    prop_assert_eq!(self.stops_by_loop, 1, "invariant 6: the loop closed twice");
                }
                Step::GraceExpired => prop_assert_eq!(
                    o.before,
                    Phase::Cancelling,
                    "invariant 6: the grace timer stopped a producer nobody cancelled"
                ),
                Step::Shutdown => {
                    prop_assert!(
                        matches!(o.before, Phase::Running | Phase::Cancelling),
                        "invariant 6: the exit stopped a producer in {:?}",
                        o.before
                    );
                    prop_assert_eq!(
                        o.after,
                        Phase::Cancelling,
                        "L2: the exit ended the consumer"
                    );
                    if self.reason.is_none() {
                        self.reason = Some(EXIT_REASON.to_owned());
                    }
                }
                other => prop_assert!(false, "invariant 6: {:?} told the producer to stop", other),
            }
        }

        // C4: a producer starts at most once, and never after a cancel that came before it
        // started (its coroutine is discarded).
        if o.action == Action::Run {
            self.runs += 1;
            prop_assert!(!started_before, "C4: the producer was started twice");
            prop_assert!(live_before, "C4: started an ended crossing");
        }
        if o.step == &Step::Start && self.cancelled_before_start {
            prop_assert_eq!(
                o.action,
                Action::Discard,
                "C4: a start after a cancel-before-start"
            );
        }

        // C3: the reason is the message of the first cancel that signalled or stopped.
        prop_assert_eq!(o.reason, self.reason.as_deref(), "C3: cancellation_reason");
        Ok(())
    }
}
