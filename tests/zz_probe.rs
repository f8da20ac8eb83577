//! probe
use pyo3::prelude::*;
#[test]
fn probe() {
    pyo3::Python::attach(|py| {
        let m = py.import("sys").unwrap();
        println!("{} {} {}", m.getattr("version").unwrap(), m.getattr("prefix").unwrap(), m.getattr("path").unwrap());
        py.import("asyncio").unwrap();
        py.import("contextvars").unwrap();
    });
}
