//! Random scenarios: which machine, and what happens to it.

use crate::state::{Crossing, Event, Mode, Outcome};
use proptest::prelude::*;

/// The longest sequence of events a scenario holds.
pub const MAX_STEPS: usize = 12;

/// Which constructor made the crossing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctor {
    /// [`Crossing::new`]: the producer has not started (`into_future`).
    New,
    /// [`Crossing::running`]: the producer already runs (`future_into_py`).
    Running,
}

/// One event, as an observer feeds it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// [`Event::Start`].
    Start,
    /// [`Crossing::cancel`] with Python's message, if any.
    Cancel(Option<&'static str>),
    /// `on(Event::Cancel)`: a cancel without a message (a dropped `PyFuture`).
    CancelEvent,
    /// [`Event::Finish`].
    Finish(Outcome),
    /// [`Event::GraceExpired`].
    GraceExpired,
    /// [`Event::Detach`].
    Detach,
    /// [`Event::LoopClosed`].
    LoopClosed,
    /// [`Crossing::shutdown`] with [`EXIT_REASON`].
    Shutdown,
}

/// The reason the scenarios' [`Step::Shutdown`] records.
pub const EXIT_REASON: &str = "exiting";

impl Step {
    /// Feeds this step into `machine`, as the bridge would.
    pub fn feed(&self, machine: &mut Crossing) -> crate::state::Action {
        match self {
            Step::Start => machine.on(Event::Start),
            Step::Cancel(reason) => machine.cancel(reason.map(str::to_owned)),
            Step::CancelEvent => machine.on(Event::Cancel),
            Step::Finish(outcome) => machine.on(Event::Finish(*outcome)),
            Step::GraceExpired => machine.on(Event::GraceExpired),
            Step::Detach => machine.on(Event::Detach),
            Step::LoopClosed => machine.on(Event::LoopClosed),
            Step::Shutdown => machine.shutdown(EXIT_REASON),
        }
    }
}

/// A machine and what happens to it.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The crossing's mode.
    pub mode: Mode,
    /// How it was made.
    pub ctor: Ctor,
    /// The events, in order.
    pub steps: Vec<Step>,
}

impl Scenario {
    /// A fresh machine as this scenario makes it.
    pub fn machine(&self) -> Crossing {
        match self.ctor {
            Ctor::New => Crossing::new(self.mode),
            Ctor::Running => Crossing::running(self.mode),
        }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Value),
        Just(Outcome::Error),
        Just(Outcome::Cancellation),
        Just(Outcome::Abandoned),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // Shrinks toward the earlier entries: a counterexample reads Start, Cancel, Finish(Value).
    prop_oneof![
        2 => Just(Step::Start),
        3 => prop_oneof![Just(None), Just(Some("first")), Just(Some("second"))].prop_map(Step::Cancel),
        1 => Just(Step::CancelEvent),
        4 => outcome().prop_map(Step::Finish),
        1 => Just(Step::GraceExpired),
        1 => Just(Step::Detach),
        1 => Just(Step::LoopClosed),
        1 => Just(Step::Shutdown),
    ]
}

/// Scenarios in both modes, from both constructors, with 1 to [`MAX_STEPS`] events.
pub fn scenarios() -> impl Strategy<Value = Scenario> {
    let mode = prop_oneof![Just(Mode::Drop), Just(Mode::Cooperative)];
    let ctor = prop_oneof![Just(Ctor::New), Just(Ctor::Running)];
    (mode, ctor, prop::collection::vec(step(), 1..=MAX_STEPS))
        .prop_map(|(mode, ctor, steps)| Scenario { mode, ctor, steps })
}
