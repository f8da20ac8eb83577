//! The crossing state machine against its reference model and its invariants (rules S, C3,
//! C4, C5, C7), and proof that the property catches each deliberately broken variant.

use proptest::prelude::*;
use proptest::test_runner::TestError;
use pyo3_async_bridge_proptests::check::{cases, check, config, run, Verdict};
use pyo3_async_bridge_proptests::scenario::{scenarios, Ctor, Scenario, Step};
use pyo3_async_bridge_proptests::state::mutants::Mutant;
use pyo3_async_bridge_proptests::state::{Action, Mode, Outcome};

proptest! {
    #![proptest_config(config())]

    /// The property itself: every step agrees with the model and keeps the invariants.
    #[test]
    fn c7_machine_matches_model_and_invariants(scenario in scenarios()) {
        check(&scenario)?;
    }
}

/// Runs the property with `mutant` active and asserts it fails within the budget, on a
/// scenario that passes without the mutant.
fn assert_caught(mutant: Mutant) -> Scenario {
    let Verdict {
        budget,
        first_failure,
        result,
    } = run(Some(mutant));
    let scenario = match result {
        Err(TestError::Fail(why, scenario)) => {
            println!(
                "{mutant:?}: caught at case {} of {budget}; shrunk to {scenario:?}: {why}",
                first_failure.expect("a failing case was counted"),
            );
            scenario
        }
        Err(other) => panic!("{mutant:?}: the run aborted: {other}"),
        Ok(()) => panic!("{mutant:?} survived {budget} cases"),
    };
    assert!(
        check(&scenario).is_ok(),
        "{mutant:?}: its counterexample also fails the real machine: {scenario:?}"
    );
    scenario
}

#[test]
fn c7_unmutated_machine_passes_the_same_runner() {
    let verdict = run(None);
    assert_eq!(verdict.budget, cases());
    assert_eq!(verdict.first_failure, None);
    if let Err(e) = verdict.result {
        panic!("the real machine fails the property: {e}");
    }
}

#[test]
fn c3_mutant_deliver_after_cancel_is_caught() {
    let scenario = assert_caught(Mutant::DeliverAfterCancel);
    assert!(
        scenario.mode == Mode::Cooperative || scenario.steps.contains(&Step::Shutdown),
        "only a cooperative cancel or the exit lets a finish come after it: {scenario:?}"
    );
}

#[test]
fn c4_mutant_start_after_cancel_is_caught() {
    let scenario = assert_caught(Mutant::StartAfterCancel);
    assert_eq!(
        scenario.ctor,
        Ctor::New,
        "only a producer not started can be cancelled before it starts"
    );
}

#[test]
fn c7_mutant_deliver_twice_is_caught() {
    let scenario = assert_caught(Mutant::DeliverTwice);
    let finishes = scenario
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Finish(_)))
        .count();
    assert!(
        finishes >= 2,
        "a second delivery needs a second finish: {scenario:?}"
    );
}

#[test]
fn c5_mutant_cancellation_as_error_is_caught() {
    let scenario = assert_caught(Mutant::CancellationAsError);
    assert!(
        scenario
            .steps
            .contains(&Step::Finish(Outcome::Cancellation)),
        "{scenario:?}"
    );
}

/// The examples the rules name, spelled out (they are also among the random cases).
#[test]
fn c3_c4_c5_rules_by_example() {
    for (mode, ctor, steps, expected) in [
        // C4: cancelled before it started, the producer never runs.
        (
            Mode::Drop,
            Ctor::New,
            vec![Step::Cancel(Some("first")), Step::Start],
            vec![Action::Nothing, Action::Discard],
        ),
        // C3 cooperative: the value that follows a cancel is not delivered.
        (
            Mode::Cooperative,
            Ctor::Running,
            vec![Step::Cancel(Some("first")), Step::Finish(Outcome::Value)],
            vec![Action::Signal, Action::EndCancelled],
        ),
        // C5: a cancellation outcome ends the consumer cancelled.
        (
            Mode::Drop,
            Ctor::Running,
            vec![Step::Finish(Outcome::Cancellation)],
            vec![Action::EndCancelled],
        ),
        // C7: a late finish after a delivery is discarded.
        (
            Mode::Drop,
            Ctor::Running,
            vec![Step::Finish(Outcome::Value), Step::Finish(Outcome::Value)],
            vec![Action::Deliver(Outcome::Value), Action::Discard],
        ),
    ] {
        let scenario = Scenario { mode, ctor, steps };
        check(&scenario).unwrap_or_else(|e| panic!("{scenario:?}: {e}"));
        let mut machine = scenario.machine();
        let actions: Vec<Action> = scenario
            .steps
            .iter()
            .map(|s| s.feed(&mut machine))
            .collect();
        assert_eq!(actions, expected, "{scenario:?}");
    }
}

/// C3: `cancellation_reason()` is the message of the first cancel that reached the producer.
#[test]
fn c3_reason_is_the_first_cancel_that_reached_the_producer() {
    let mut cooperative = Scenario {
        mode: Mode::Cooperative,
        ctor: Ctor::Running,
        steps: vec![],
    }
    .machine();
    assert_eq!(cooperative.cancel(Some("first".into())), Action::Signal);
    assert_eq!(cooperative.cancel(Some("second".into())), Action::Nothing);
    assert_eq!(cooperative.reason(), Some("first"));

    // Cancelled before it started: the producer is never told, so nothing is recorded.
    let mut unstarted = Scenario {
        mode: Mode::Drop,
        ctor: Ctor::New,
        steps: vec![],
    }
    .machine();
    assert_eq!(unstarted.cancel(Some("first".into())), Action::Nothing);
    assert_eq!(unstarted.reason(), None);
}

/// Start drawn anywhere, any number of times, from both constructors: the producer starts at
/// most once (a regression test: `Detached` once forgot whether the producer had started).
#[test]
fn c4_start_runs_a_producer_at_most_once() {
    let verdict = run(None);
    if let Err(e) = verdict.result {
        panic!("failed at case {:?}: {e}", verdict.first_failure);
    }
}
