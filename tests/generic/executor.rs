//! `Mini`: a small executor written for these tests, plugged into the bridge through the
//! `generic` traits, as a user's own runtime would be.
//!
//! - [`Runtime`]: two worker threads ("mini-worker") share one run queue; a task is an
//!   `Arc<Task>` woken through `ArcWake`, which puts it back on the queue.
//! - [`ContextExt`]: the task-locals live in a thread-local, set only while the scoped future is
//!   polled or dropped ([`Scoped`]), so tasks sharing a worker never see each other's.
//! - [`SpawnLocalExt`], [`LocalContextExt`]: `!Send` tasks run on a [`LocalThread`] ("mini-local"),
//!   a futures `LocalPool` that takes jobs from other threads.

use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::task::{waker_ref, ArcWake, LocalSpawnExt};
use futures::{FutureExt, StreamExt};
use pyo3_async_bridge::generic::{ContextExt, JoinError, LocalContextExt, Runtime, SpawnLocalExt};
use pyo3_async_bridge::TaskLocals;
use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

/// The name of the executor's worker threads.
pub const WORKER: &str = "mini-worker";
/// The name of the thread that runs local tasks.
pub const LOCAL: &str = "mini-local";

/// The runtime.
pub struct Mini;

struct Pool {
    queue: Mutex<VecDeque<Arc<Task>>>,
    ready: Condvar,
}

struct Task {
    fut: Mutex<Option<BoxFuture<'static, ()>>>,
}

impl ArcWake for Task {
    // Any thread. Pushing under the queue's lock, then notifying, cannot be missed by a worker:
    // workers check the queue under the same lock before they wait.
    fn wake_by_ref(task: &Arc<Self>) {
        let pool = pool();
        pool.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Arc::clone(task));
        pool.ready.notify_one();
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    static STARTED: std::sync::Once = std::sync::Once::new();
    let pool = POOL.get_or_init(|| Pool {
        queue: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
    });
    STARTED.call_once(|| {
        for _ in 0..2 {
            std::thread::Builder::new()
                .name(WORKER.into())
                .spawn(|| {
                    // Counted as a runtime thread by the bridge's attach counters (A1).
                    pyo3_async_bridge::debug::mark_runtime_thread();
                    work()
                })
                .expect("spawn a mini worker");
        }
    });
    pool
}

/// A worker thread: polls tasks off the queue for the life of the process. A task woken while
/// being polled is queued again; the next poll waits for this one on the task's lock.
fn work() {
    let pool = pool();
    loop {
        let task = {
            let mut queue = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                match queue.pop_front() {
                    Some(task) => break task,
                    None => {
                        queue = pool
                            .ready
                            .wait(queue)
                            .unwrap_or_else(PoisonError::into_inner)
                    }
                }
            }
        };
        let mut slot = task.fut.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fut) = slot.as_mut() {
            let waker = waker_ref(&task);
            if fut
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                *slot = None;
            }
        }
    }
}

/// Why a `Mini` task did not finish.
#[derive(Debug)]
pub enum MiniJoinError {
    /// It panicked, with this payload.
    Panicked(Box<dyn Any + Send>),
    /// It was dropped unfinished.
    Dropped,
}

impl JoinError for MiniJoinError {
    fn is_panic(&self) -> bool {
        matches!(self, MiniJoinError::Panicked(_))
    }

    fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        match self {
            MiniJoinError::Panicked(payload) => payload,
            MiniJoinError::Dropped => panic!("the task did not panic"),
        }
    }
}

type Handle = Pin<Box<dyn Future<Output = Result<(), MiniJoinError>> + Send>>;

/// `fut` with its panic caught and its end reported to the returned handle.
fn joined<F: Future<Output = ()> + 'static>(fut: F) -> (impl Future<Output = ()>, Handle) {
    let (tx, rx) = oneshot::channel();
    let body = async move {
        let ended = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
        let _ = tx.send(ended.map_err(MiniJoinError::Panicked));
    };
    let handle = Box::pin(rx.map(|r| r.unwrap_or(Err(MiniJoinError::Dropped))));
    (body, handle)
}

impl Runtime for Mini {
    type JoinError = MiniJoinError;
    type JoinHandle = Handle;

    fn spawn<F>(fut: F) -> Handle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (body, handle) = joined(fut);
        let task = Arc::new(Task {
            fut: Mutex::new(Some(Box::pin(body))),
        });
        ArcWake::wake(task);
        handle
    }

    fn spawn_blocking<F>(f: F) -> Handle
    where
        F: FnOnce() + Send + 'static,
    {
        let (body, handle) = joined(async move { f() });
        std::thread::spawn(move || futures::executor::block_on(body));
        handle
    }
}

thread_local! {
    static LOCALS: RefCell<Option<TaskLocals>> = const { RefCell::new(None) };
}

/// Puts `locals` in this thread's slot for the duration of `f`, then puts back what was there.
fn with_locals<R>(locals: &mut Option<TaskLocals>, f: impl FnOnce() -> R) -> R {
    LOCALS.with(|slot| std::mem::swap(&mut *slot.borrow_mut(), locals));
    let out = f();
    LOCALS.with(|slot| std::mem::swap(&mut *slot.borrow_mut(), locals));
    out
}

/// A future with its task-locals: set while it is polled and while it is dropped.
#[pin_project::pin_project(PinnedDrop)]
pub struct Scoped<F> {
    locals: Option<TaskLocals>,
    #[pin]
    fut: Option<F>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut fut = this.fut;
        let polled = with_locals(this.locals, || match fut.as_mut().as_pin_mut() {
            Some(f) => f.poll(cx),
            None => Poll::Pending,
        });
        if polled.is_ready() {
            with_locals(this.locals, || fut.set(None));
        }
        polled
    }
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for Scoped<F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        let mut fut = this.fut;
        with_locals(this.locals, || fut.set(None));
    }
}

impl ContextExt for Mini {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(Scoped {
            locals: Some(locals),
            fut: Some(fut),
        })
    }

    fn get_task_locals() -> Option<TaskLocals> {
        LOCALS.with(|slot| slot.borrow().clone())
    }
}

impl LocalContextExt for Mini {
    fn scope_local<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R>>>
    where
        F: Future<Output = R> + 'static,
    {
        Box::pin(Scoped {
            locals: Some(locals),
            fut: Some(fut),
        })
    }
}

thread_local! {
    static SPAWNER: RefCell<Option<futures::executor::LocalSpawner>> = const { RefCell::new(None) };
}

impl SpawnLocalExt for Mini {
    /// Panics outside a [`LocalThread`], as tokio's `spawn_local` does outside a `LocalSet`.
    fn spawn_local<F>(fut: F) -> Handle
    where
        F: Future<Output = ()> + 'static,
    {
        let (body, handle) = joined(fut);
        SPAWNER.with(|s| {
            s.borrow()
                .as_ref()
                .expect("Mini::spawn_local outside a LocalThread")
                .spawn_local(body)
                .expect("the local pool runs")
        });
        handle
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread running a futures `LocalPool` (where [`Mini::spawn_local`] spawns) that also runs
/// jobs sent from other threads. Dropping it drops the pool with whatever tasks it holds.
pub struct LocalThread {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalThread {
    /// Starts the thread.
    pub fn start() -> Self {
        let (tx, mut rx) = mpsc::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name(LOCAL.into())
            .spawn(move || {
                let mut pool = futures::executor::LocalPool::new();
                SPAWNER.with(|s| *s.borrow_mut() = Some(pool.spawner()));
                pool.run_until(async move {
                    while let Some(job) = rx.next().await {
                        job();
                    }
                });
                SPAWNER.with(|s| *s.borrow_mut() = None);
            })
            .expect("spawn the local thread");
        LocalThread {
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `job` on the local thread, inside its pool.
    pub fn send(&self, job: impl FnOnce() + Send + 'static) {
        self.jobs
            .as_ref()
            .expect("the local thread runs")
            .unbounded_send(Box::new(job))
            .unwrap_or_else(|_| panic!("the local thread is gone"));
    }

    /// Stops taking jobs, drops the pool and joins the thread.
    pub fn stop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the local thread panicked");
        }
    }
}
