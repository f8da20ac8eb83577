//! The bridge's runtime (rule R1): each set-up runs in a child process of its own, since the
//! runtime is set once per process. Crossings in both directions, with tokio timers, must work
//! and run on the expected threads.

mod common;

use common::child;
use pyo3::prelude::*;
use pyo3_async_bridge::tokio::{
    get_handle, get_runtime, init, init_with_handle, init_with_runtime, into_future, run, spawn,
    AlreadyInitialized, Builder, DRIVER_THREAD,
};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::runtime::RuntimeFlavor;

/// Crossings in both directions inside `run`, with tokio timers; returns the names of the
/// threads the Rust side ran on.
fn crossings_work() -> BTreeSet<String> {
    Python::attach(|py| {
        run(py, async {
            let mut names = BTreeSet::new();
            for i in 0..20u32 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                names.insert(thread_name());
                let spawned = spawn(async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    thread_name()
                });
                names.insert(spawned.await.expect("join").expect("not cancelled"));
                let fut = Python::attach(|py| {
                    let sleep = py.import("asyncio")?.getattr("sleep")?;
                    into_future(sleep.call1((0, i))?)
                })?;
                let value = fut.await?;
                assert_eq!(Python::attach(move |py| value.extract::<u32>(py))?, i);
            }
            Ok(names)
        })
        .unwrap_or_else(|e| common::fail(py, e))
    })
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_owned()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn current_thread_builder() -> Builder {
    let mut b = Builder::new_current_thread();
    b.enable_all();
    b
}

/// The roles of the child processes.
#[test]
fn child() {
    let Some(role) = child::role() else { return };
    match role.as_str() {
        "current_thread_owned" => {
            init(current_thread_builder());
            assert_eq!(
                get_runtime().handle().runtime_flavor(),
                RuntimeFlavor::CurrentThread
            );
            assert_eq!(crossings_work(), names(&[DRIVER_THREAD]));
        }
        "current_thread_user_driven" => {
            init(current_thread_builder());
            let user = std::thread::Builder::new()
                .name("user-driver".into())
                .spawn(|| get_runtime().block_on(std::future::pending::<()>()))
                .expect("spawn");
            let seen = crossings_work();
            assert!(
                seen.is_subset(&names(&[DRIVER_THREAD, "user-driver"])),
                "{seen:?}"
            );
            assert!(!user.is_finished());
        }
        "handle_multi_thread" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("user-worker")
                .enable_all()
                .build()
                .expect("runtime");
            init_with_handle(rt.handle().clone()).expect("first hand-over");
            let refused = std::panic::catch_unwind(|| {
                get_runtime();
            })
            .expect_err("get_runtime panics after a handle was handed over");
            let msg = refused
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| refused.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            assert!(msg.contains("get_handle()"), "{msg}");
            assert_eq!(get_handle().id(), rt.handle().id());
            assert_eq!(crossings_work(), names(&["user-worker"]));
            let other = Box::leak(Box::new(current_thread_builder().build().expect("rt")));
            assert_eq!(init_with_runtime(other), Err(()));
            assert_eq!(
                init_with_handle(other.handle().clone()),
                Err(AlreadyInitialized)
            );
            init(current_thread_builder()); // no effect, no panic
            assert_eq!(get_handle().id(), rt.handle().id());
        }
        "handle_current_thread_driven_by_owner" => {
            let rt = current_thread_builder().build().expect("runtime");
            init_with_handle(rt.handle().clone()).expect("first hand-over");
            std::thread::Builder::new()
                .name("owner".into())
                .spawn(move || rt.block_on(std::future::pending::<()>()))
                .expect("spawn");
            assert_eq!(crossings_work(), names(&["owner"]));
        }
        "borrowed_runtime" => {
            let rt = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("lent-worker")
                    .enable_all()
                    .build()
                    .expect("runtime"),
            ));
            assert_eq!(init_with_runtime(rt), Ok(()));
            assert!(std::ptr::eq(get_runtime(), rt));
            assert_eq!(crossings_work(), names(&["lent-worker"]));
            assert_eq!(init_with_runtime(rt), Err(()));
        }
        "init_after_first_use" => {
            let first = get_handle().id();
            init(current_thread_builder()); // too late: no effect, no panic
            assert_eq!(get_handle().id(), first);
            assert_eq!(
                get_runtime().handle().runtime_flavor(),
                RuntimeFlavor::MultiThread
            );
            let other = Box::leak(Box::new(current_thread_builder().build().expect("rt")));
            assert_eq!(init_with_runtime(other), Err(()));
            let err = init_with_handle(other.handle().clone()).unwrap_err();
            assert!(err.to_string().contains("already set"), "{err}");
            assert_eq!(crossings_work(), names(&["pyo3-async-bridge-worker"]));
        }
        "peer_idioms" => {
            // What extensions written for pyo3-async-runtimes do with the runtime: enter it to
            // spawn from sync code, block on it, spawn through its handle.
            let rt = get_runtime();
            let spawned = {
                let _guard = rt.enter();
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    thread_name()
                })
            };
            assert_eq!(
                rt.block_on(spawned).expect("join"),
                "pyo3-async-bridge-worker"
            );
            let via_handle = rt.handle().spawn(async { 40 + 2 });
            assert_eq!(rt.block_on(via_handle).expect("join"), 42);
            assert_eq!(get_handle().id(), rt.handle().id());
            assert_eq!(crossings_work(), names(&["pyo3-async-bridge-worker"]));
        }
        other => panic!("unknown child role {other:?}"),
    }
    println!("child ok");
}

#[test]
fn r1_the_default_runtime_takes_the_peers_idioms_enter_block_on_and_handle() {
    child::run("peer_idioms").assert_ok_with("child ok");
}

#[test]
fn r1_current_thread_runtime_the_bridge_owns_is_driven_by_its_own_thread() {
    child::run("current_thread_owned").assert_ok_with("child ok");
}

#[test]
fn r1_current_thread_runtime_also_driven_by_a_user_thread_keeps_working() {
    child::run("current_thread_user_driven").assert_ok_with("child ok");
}

#[test]
fn r1_handle_to_a_multi_thread_runtime_is_used_and_get_runtime_points_to_get_handle() {
    child::run("handle_multi_thread").assert_ok_with("child ok");
}

#[test]
fn r1_handle_to_a_current_thread_runtime_driven_by_its_owner() {
    child::run("handle_current_thread_driven_by_owner").assert_ok_with("child ok");
}

#[test]
fn r1_borrowed_runtime_is_used_and_set_once() {
    child::run("borrowed_runtime").assert_ok_with("child ok");
}

#[test]
fn r1_init_after_first_use_has_no_effect_and_hand_overs_are_refused() {
    child::run("init_after_first_use").assert_ok_with("child ok");
}
