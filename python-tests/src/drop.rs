//! Rust drops, Python stops (C4), chains (C6), and the race-regression probes (C7).

use pyo3::prelude::*;

pub(crate) fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
