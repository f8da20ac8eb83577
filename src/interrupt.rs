//! Ctrl-C during [`run`](super::run) (rule R3).
//!
//! An embedded interpreter (`Py_InitializeEx(0)`, what PyO3's `auto-initialize` does) installs
//! no SIGINT handler, so Ctrl-C would kill the process without any cleanup; under `python`,
//! Python's default handler raises `KeyboardInterrupt` wherever the main thread happens to be,
//! possibly inside a loop callback. So, as `asyncio.run` does, `run` on the main thread
//! installs a handler that cancels the main crossing instead, when SIGINT has Python's default
//! handler or `SIG_DFL`, and puts the previous handler back afterwards.
//!
//! The handler goes through `loop.add_signal_handler` where the loop has it: the C-level
//! handler then writes to the loop's wakeup socket, so the loop wakes whichever OS thread
//! received the signal, and the callback runs on the loop thread between callbacks. Elsewhere
//! it is a plain `signal.signal` handler, which wakes the loop itself.

use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The SIGINT callback. Loop thread (the main thread).
#[pyclass(module = "pyo3_async_bridge", frozen)]
struct OnInterrupt {
    main: Py<PyAny>,
    event_loop: Py<PyAny>,
    count: AtomicUsize,
}

#[pymethods]
impl OnInterrupt {
    /// First Ctrl-C: cancel the main crossing (its token fires, its Rust future is dropped, C3)
    /// and wake the loop. Later ones, or one after the crossing ended: `KeyboardInterrupt` at
    /// once, the way out of a cancellation that does not end.
    #[pyo3(signature = (*_args))]
    fn __call__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        let first = self.count.fetch_add(1, Ordering::SeqCst) == 0;
        let main = self.main.bind(py);
        if !first || main.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Err(PyKeyboardInterrupt::new_err(()));
        }
        main.call_method0(intern!(py, "cancel"))?;
        // A `signal.signal` handler runs while the loop may wait in `select` with a long
        // timeout: make it look at its ready queue now. (Harmless from a loop callback.)
        let wake = wrap_pyfunction!(wake_up, py)?;
        self.event_loop
            .bind(py)
            .call_method1(intern!(py, "call_soon_threadsafe"), (wake,))?;
        Ok(())
    }
}

/// Does nothing: scheduling it wakes the loop.
#[pyfunction]
fn wake_up() {}

/// How the handler was installed.
enum Via {
    Loop,
    Signal,
}

/// The handler `run` installed, and what to restore.
pub(super) struct Interrupt {
    handler: Py<OnInterrupt>,
    previous: Py<PyAny>,
    via: Via,
}

impl Interrupt {
    /// Loop thread, before the loop runs: installs the handler when this is the main thread and
    /// SIGINT has Python's default handler or `SIG_DFL`; `None` (nothing installed) otherwise,
    /// also when the platform refuses.
    pub(super) fn install(
        event_loop: &Bound<'_, PyAny>,
        main: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Interrupt>> {
        let py = event_loop.py();
        let threading = py.import("threading")?;
        let current = threading.call_method0(intern!(py, "current_thread"))?;
        if !current.is(threading.call_method0(intern!(py, "main_thread"))?) {
            return Ok(None);
        }
        let signal = py.import("signal")?;
        let sigint = signal.getattr(intern!(py, "SIGINT"))?;
        let previous = signal.call_method1(intern!(py, "getsignal"), (&sigint,))?;
        let default = previous.is(signal.getattr(intern!(py, "default_int_handler"))?)
            || previous.eq(signal.getattr(intern!(py, "SIG_DFL"))?)?;
        if !default {
            return Ok(None);
        }
        let handler = Py::new(
            py,
            OnInterrupt {
                main: main.clone().unbind(),
                event_loop: event_loop.clone().unbind(),
                count: AtomicUsize::new(0),
            },
        )?;
        let via = if event_loop
            .call_method1(intern!(py, "add_signal_handler"), (&sigint, &handler))
            .is_ok()
        {
            Via::Loop
        } else if signal
            .call_method1(intern!(py, "signal"), (&sigint, &handler))
            .is_ok()
        {
            Via::Signal
        } else {
            return Ok(None);
        };
        Ok(Some(Interrupt {
            handler,
            previous: previous.unbind(),
            via,
        }))
    }

    /// Whether Ctrl-C was pressed while the handler was installed.
    pub(super) fn fired(&self) -> bool {
        self.handler.get().count.load(Ordering::SeqCst) > 0
    }

    /// Loop thread: takes the handler off and puts the previous one back (a handler someone
    /// installed meanwhile over a plain `signal.signal` one is left in place).
    pub(super) fn restore(self, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = event_loop.py();
        let signal = py.import("signal")?;
        let sigint = signal.getattr(intern!(py, "SIGINT"))?;
        // A `KeyboardInterrupt` (a Ctrl-C landing inside the loop's method) is returned once the
        // previous handler is back.
        let mut interrupted = None;
        match self.via {
            Via::Loop => {
                // An `Exception` from it is not ours to return: the handler goes back below all
                // the same. (rloop 0.5's `remove_signal_handler` always raises `AttributeError`:
                // it calls a method under a name that does not exist. `run`'s value must not
                // turn into that error.) What the loop itself keeps (asyncio's wakeup fd) is the
                // loop's to clean up.
                match event_loop.call_method1(intern!(py, "remove_signal_handler"), (&sigint,)) {
                    Err(e) if !e.is_instance_of::<PyException>(py) => interrupted = Some(e),
                    _ => {}
                }
            }
            Via::Signal => {
                let current = signal.call_method1(intern!(py, "getsignal"), (&sigint,))?;
                if !current.is(&self.handler) {
                    return Ok(());
                }
            }
        }
        signal.call_method1(intern!(py, "signal"), (&sigint, &self.previous))?;
        interrupted.map_or(Ok(()), Err)
    }
}
