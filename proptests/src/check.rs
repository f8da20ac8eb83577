//! One scenario against the machine, the model and the invariants; the case budget; a runner
//! that returns its verdict (so a test can assert that a mutant *fails* the property).

use crate::model::Model;
use crate::rules::{Observed, Rules};
use crate::scenario::{scenarios, Ctor, Scenario};
use crate::state::mutants::{self, Mutant};
use proptest::prelude::*;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRunner,
};
use std::cell::Cell;

/// Cases per property when no variable says otherwise.
pub const DEFAULT_CASES: u32 = 10_000;

/// The case budget: `BRIDGE_PROPTEST_CASES`, else `PROPTEST_CASES`, else [`DEFAULT_CASES`].
///
/// # Panics
/// If the variable set is not a number.
pub fn cases() -> u32 {
    ["BRIDGE_PROPTEST_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|var| {
            let value = std::env::var(var).ok()?;
            Some(
                value
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}={value:?} is not a number")),
            )
        })
        .unwrap_or(DEFAULT_CASES)
}

/// proptest's configuration with the case budget. A failing case is saved next to the test
/// file (`tests/<name>.proptest-regressions`) and replayed first on the next run.
pub fn config() -> Config {
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..unpersisted()
    }
}

/// The budget, and XorShift unless `PROPTEST_RNG_ALGORITHM` names another generator: in a debug
/// build proptest's default ChaCha makes 10,000 cases take ~5 s instead of ~1 s.
fn unpersisted() -> Config {
    let defaults = Config::default();
    let rng_algorithm = match std::env::var_os("PROPTEST_RNG_ALGORITHM") {
        Some(_) => defaults.rng_algorithm,
        None => RngAlgorithm::XorShift,
    };
    Config {
        cases: cases(),
        rng_algorithm,
        failure_persistence: None,
        ..defaults
    }
}

/// Runs `scenario` through the machine (with whatever mutant is active on this thread) and
/// the model; after each step compares phase, action, reason and `is_cancelled`, and checks
/// the invariants.
///
/// # Errors
/// The first disagreement, naming the step and the rule.
pub fn check(scenario: &Scenario) -> Result<(), TestCaseError> {
    let mut machine = scenario.machine();
    let mut model = Model::new(scenario.mode, scenario.ctor == Ctor::Running);
    let mut rules = Rules::new(scenario);
    for (i, step) in scenario.steps.iter().enumerate() {
        let before = machine.phase();
        let action = step.feed(&mut machine);
        let after = machine.phase();
        rules
            .observe(Observed {
                step,
                before,
                action,
                after,
                reason: machine.reason(),
            })
            .map_err(|e| at_step(e, i, step))?;
        let expected = model.step(step);
        prop_assert_eq!(
            action,
            expected,
            "step {} {:?}: action differs from the model",
            i,
            step
        );
        prop_assert_eq!(
            after,
            model.phase(),
            "step {} {:?}: phase differs from the model",
            i,
            step
        );
        prop_assert_eq!(
            machine.reason(),
            model.reason(),
            "step {} {:?}: reason",
            i,
            step
        );
        prop_assert_eq!(
            machine.is_cancelled(),
            model.is_cancelled(),
            "step {} {:?}: is_cancelled",
            i,
            step
        );
        prop_assert!(model.delivered() <= 1, "model bug: delivered twice");
    }
    Ok(())
}

fn at_step(e: TestCaseError, i: usize, step: &crate::scenario::Step) -> TestCaseError {
    match e {
        TestCaseError::Fail(why) => TestCaseError::fail(format!("step {i} {step:?}: {why}")),
        other => other,
    }
}

/// What [`run`] found.
#[derive(Debug)]
pub struct Verdict {
    /// The budget it ran with.
    pub budget: u32,
    /// The 1-based number of the first failing case (before shrinking), if any failed.
    pub first_failure: Option<u32>,
    /// proptest's verdict; a failure carries the shrunk scenario.
    pub result: Result<(), TestError<Scenario>>,
}

/// Runs the property over [`cases`] random scenarios with `mutant` active on this thread.
/// Nothing is persisted: a mutant's failures are expected.
pub fn run(mutant: Option<Mutant>) -> Verdict {
    let config = unpersisted();
    let budget = config.cases;
    let mut runner = TestRunner::new(config);
    let calls = Cell::new(0u32);
    let first_failure = Cell::new(None);
    let result = mutants::with(mutant, || {
        runner.run(&scenarios(), |scenario| {
            calls.set(calls.get() + 1);
            let verdict = check(&scenario);
            if verdict.is_err() && first_failure.get().is_none() {
                first_failure.set(Some(calls.get()));
            }
            verdict
        })
    });
    Verdict {
        budget,
        first_failure: first_failure.get(),
        result,
    }
}
