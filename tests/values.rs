//! Rule C2: values, errors and panics cross from Rust to Python intact (`Ok(v)` converted on
//! the loop thread, `Ok(())` as `None`, `Err(e)` as the very exception object, panics as
//! `RustPanic` with their message), and the bridge keeps working afterwards.

mod common;

use common::{crossing, gather, load_module, run, with_loop};
use pyo3::exceptions::{PyException, PyOverflowError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyInt, PyModule, PyTuple};
use pyo3_async_bridge::RustPanic;

const HELPERS: &std::ffi::CStr = cr#"
import threading

def make_error():
    """A raised ValueError with a traceback and a KeyError as __cause__."""
    try:
        try:
            raise KeyError("the cause")
        except KeyError as cause:
            raise ValueError("the error") from cause
    except ValueError as e:
        return e

def traceback_functions(exc):
    names, tb = [], exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names

def thread_id():
    return threading.get_ident()
"#;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> Bound<'_, PyModule> {
    load_module(py, &MODULE, HELPERS, c"bridge_test_values")
}

/// Runs one crossing whose Rust future returns `outcome` and returns what Python received.
fn cross<T>(event_loop: &Bound<'_, PyAny>, outcome: PyResult<T>) -> PyResult<Py<PyAny>>
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let outcome = common::Attached::new(outcome);
    let fut = crossing(event_loop, async move {
        tokio::task::yield_now().await;
        // A normalized `PyErr` holds Python references: take it attached. The outcome itself
        // travels to the loop thread with the crossing.
        Python::attach(|_py| outcome.take())
    })?;
    run(event_loop, &fut).map(Bound::unbind)
}

/// Runs one crossing whose Rust future panics with `payload`; returns the raised error.
fn cross_panicking<P: std::any::Any + Send + 'static>(
    event_loop: &Bound<'_, PyAny>,
    payload: P,
) -> PyErr {
    let fut = crossing(event_loop, async move {
        tokio::task::yield_now().await;
        if true {
            std::panic::panic_any(payload);
        }
        Ok(())
    })
    .expect("crossing created");
    run(event_loop, &fut).expect_err("a panicking future must raise")
}

#[test]
fn c2_i64_arrives_converted() {
    with_loop(|py, event_loop| {
        let got = cross(event_loop, Ok(40_i64 + 2))?;
        let got = got.bind(py);
        assert!(got.is_exact_instance_of::<PyInt>(), "got {got:?}");
        assert_eq!(got.extract::<i64>()?, 42);
        // Beyond the fast paths of small ints.
        let big = cross(event_loop, Ok(i64::MIN))?;
        assert_eq!(big.extract::<i64>(py)?, i64::MIN);
        Ok(())
    });
}

#[test]
fn c2_compound_value_arrives_converted() {
    with_loop(|py, event_loop| {
        let got = cross(
            event_loop,
            Ok((7_u8, "text".to_owned(), vec![1.5_f64, 2.5])),
        )?;
        let (a, b, c): (u8, String, Vec<f64>) = got.extract(py)?;
        assert_eq!((a, b.as_str(), c), (7, "text", vec![1.5, 2.5]));
        Ok(())
    });
}

/// Converts to `(thread id, running loop)` at the moment of conversion.
struct RecordsWhereConverted;

impl<'py> IntoPyObject<'py> for RecordsWhereConverted {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let thread = helpers(py).call_method0("thread_id")?;
        let running = py.import("asyncio")?.call_method0("_get_running_loop")?;
        (thread, running).into_pyobject(py).map(Bound::into_any)
    }
}

#[test]
fn c2_value_is_converted_on_the_loop_thread() {
    with_loop(|py, event_loop| {
        let got = cross(event_loop, Ok(RecordsWhereConverted))?;
        let (thread, running): (u64, Bound<'_, PyAny>) = got.extract(py)?;
        let here: u64 = helpers(py).call_method0("thread_id")?.extract()?;
        assert_eq!(thread, here, "converted on another thread than the loop's");
        assert!(running.is(event_loop), "converted outside the running loop");
        Ok(())
    });
}

#[test]
fn c2_unit_arrives_as_none() {
    with_loop(|py, event_loop| {
        let got = cross(event_loop, Ok(()))?;
        assert!(got.is_none(py), "Ok(()) arrived as {:?}", got.bind(py));
        Ok(())
    });
}

#[test]
fn c2_err_arrives_as_the_same_exception_object() {
    with_loop(|py, event_loop| {
        let exc = helpers(py).call_method0("make_error")?;
        let cause = exc.getattr("__cause__")?;
        assert!(!cause.is_none());
        let err = cross::<()>(event_loop, Err(PyErr::from_value(exc.clone())))
            .expect_err("Err must raise");
        let raised = err.value(py);
        assert!(
            raised.is(&exc),
            "raised {raised:?}, not the object returned"
        );
        assert!(raised.getattr("__cause__")?.is(&cause), "__cause__ lost");
        // The original frames are still at the end of the traceback.
        let functions: Vec<String> = helpers(py)
            .call_method1("traceback_functions", (raised,))?
            .extract()?;
        assert_eq!(functions.last().map(String::as_str), Some("make_error"));
        Ok(())
    });
}

#[test]
fn c2_lazy_err_arrives_with_its_type_and_message() {
    with_loop(|py, event_loop| {
        let err = cross::<()>(event_loop, Err(PyOverflowError::new_err("too big")))
            .expect_err("Err must raise");
        assert!(err.is_instance_of::<PyOverflowError>(py), "got {err}");
        assert_eq!(err.value(py).str()?.to_cow()?, "too big");
        Ok(())
    });
}

#[test]
fn c2_str_panic_raises_rust_panic_with_the_message() {
    with_loop(|py, event_loop| {
        let err = cross_panicking(event_loop, "a &str payload");
        assert!(err.is_instance_of::<RustPanic>(py), "got {err}");
        assert_eq!(err.value(py).str()?.to_cow()?, "a &str payload");
        Ok(())
    });
}

#[test]
fn c2_string_panic_raises_rust_panic_with_the_message() {
    with_loop(|py, event_loop| {
        let err = cross_panicking(event_loop, format!("a String payload #{}", 7));
        assert!(err.is_instance_of::<RustPanic>(py), "got {err}");
        assert_eq!(err.value(py).str()?.to_cow()?, "a String payload #7");
        Ok(())
    });
}

#[test]
fn c2_formatted_panic_raises_rust_panic_with_the_message() {
    with_loop(|py, event_loop| {
        let n = 3;
        let fut = crossing(event_loop, async move {
            tokio::task::yield_now().await;
            assert_eq!(n, 4, "n was {n}");
            Ok(())
        })?;
        let err = run(event_loop, &fut).expect_err("a failed assert must raise");
        assert!(err.is_instance_of::<RustPanic>(py), "got {err}");
        let message = err.value(py).str()?.to_string();
        assert!(message.contains("n was 3"), "{message}");
        Ok(())
    });
}

#[test]
fn c2_other_panic_payload_raises_rust_panic() {
    with_loop(|py, event_loop| {
        let err = cross_panicking(event_loop, 42_u32);
        assert!(err.is_instance_of::<RustPanic>(py), "got {err}");
        assert!(!err.value(py).str()?.to_cow()?.is_empty());
        Ok(())
    });
}

#[test]
fn c2_rust_panic_is_an_exception_subclass() {
    Python::attach(|py| {
        let rust_panic = py.get_type::<RustPanic>();
        assert!(rust_panic.is_subclass_of::<PyException>().unwrap());
        assert_eq!(rust_panic.name().unwrap().to_cow().unwrap(), "RustPanic");
    });
}

/// Fails or panics while being converted, on the loop thread.
enum BadConversion {
    Fails,
    Panics,
}

impl<'py> IntoPyObject<'py> for BadConversion {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, _py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Self::Fails => Err(PyOverflowError::new_err("conversion refused")),
            Self::Panics => panic!("conversion exploded"),
        }
    }
}

#[test]
fn c2_failing_conversion_raises_its_own_error() {
    with_loop(|py, event_loop| {
        let err = cross(event_loop, Ok(BadConversion::Fails)).expect_err("must raise");
        assert!(err.is_instance_of::<PyOverflowError>(py), "got {err}");
        assert_eq!(err.value(py).str()?.to_cow()?, "conversion refused");
        Ok(())
    });
}

#[test]
fn c2_panicking_conversion_raises_rust_panic() {
    with_loop(|py, event_loop| {
        let err = cross(event_loop, Ok(BadConversion::Panics)).expect_err("must raise");
        assert!(err.is_instance_of::<RustPanic>(py), "got {err}");
        let message = err.value(py).str()?.to_string();
        assert!(message.contains("conversion exploded"), "{message}");
        assert!(
            message.contains("convert"),
            "should say the conversion panicked: {message}"
        );
        Ok(())
    });
}

#[test]
fn c2_crossings_keep_working_after_errors_and_panics() {
    with_loop(|py, event_loop| {
        // Every kind of failure on one loop, concurrently with successes...
        let mut futs = Vec::new();
        for i in 0..300_i64 {
            futs.push(match i % 6 {
                0 => crossing(event_loop, async move {
                    if true {
                        std::panic::panic_any("str panic");
                    }
                    Ok(0_i64)
                })?,
                1 => crossing(event_loop, async move {
                    if true {
                        panic!("String panic {i}");
                    }
                    Ok(0_i64)
                })?,
                2 => crossing(event_loop, async {
                    Err::<i64, _>(PyOverflowError::new_err("lazy error"))
                })?,
                3 => crossing(event_loop, async { Ok(BadConversion::Panics) })?,
                _ => crossing(event_loop, async move {
                    tokio::task::yield_now().await;
                    Ok(i)
                })?,
            });
        }
        let kwargs = [("return_exceptions", true)].into_py_dict(py)?;
        let gathered =
            py.import("asyncio")?
                .call_method("gather", PyTuple::new(py, futs)?, Some(&kwargs))?;
        let results: Vec<Bound<'_, PyAny>> = run(event_loop, &gathered)?.extract()?;
        for (i, result) in (0..).zip(&results) {
            match i % 6 {
                0 | 1 | 3 => assert!(result.is_instance_of::<RustPanic>(), "{i}: {result:?}"),
                2 => assert!(
                    result.is_instance_of::<PyOverflowError>(),
                    "{i}: {result:?}"
                ),
                _ => assert_eq!(result.extract::<i64>()?, i),
            }
        }
        // ...and afterwards the runtime and the loop still carry values both ways.
        let futs = (0..200_i64)
            .map(|i| crossing(event_loop, async move { Ok(i * 3) }))
            .collect::<PyResult<Vec<_>>>()?;
        let values = gather(event_loop, futs)?
            .iter()
            .map(|v| v.extract::<i64>())
            .collect::<PyResult<Vec<_>>>()?;
        assert_eq!(values, (0..200).map(|i| i * 3).collect::<Vec<_>>());
        let unit = cross(event_loop, Ok(()))?;
        assert!(unit.is_none(py));
        Ok(())
    });
}
