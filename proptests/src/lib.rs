//! Model-based property tests of the crossing state machine, `src/state.rs` (rules S, C3–C7).
//!
//! The machine is plain data, so this crate compiles the library's own `state.rs` in directly
//! (no pyo3, no tokio) and builds in seconds. `build.rs` sets `--cfg bridge_mutants`, which
//! compiles the machine's deliberately broken variants ([`state::mutants`]) into this crate and
//! nowhere else.
//!
//! - [`scenario`]: random scenarios: a mode, a constructor and up to [`scenario::MAX_STEPS`]
//!   events.
//! - [`model`]: the reference model, written from the rules; it shares no code with the machine.
//! - [`rules`]: the machine's numbered invariants, checked on what it does, step by step.
//! - [`check`]: one scenario against machine, model and invariants; the case budget; a runner
//!   that returns the verdict instead of panicking (to prove each mutant is caught).

#[path = "../../src/state.rs"]
pub mod state;

pub mod check;
pub mod model;
pub mod rules;
pub mod scenario;
