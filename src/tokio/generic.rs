//! [`TokioRuntime`]: the bridge's tokio runtime behind the [`generic`](crate::generic) traits
//! (SPEC R7).

use super::{handle, JoinHandle, TASK_LOCALS};
use crate::generic;
use crate::TaskLocals;
use std::future::Future;

/// The bridge's tokio runtime ([`get_handle`](super::get_handle)) as a [`generic`](crate::generic) runtime, for
/// code written against the generic traits. Its crossings are the tokio module's, less the
/// [`cancellation_token`](super::cancellation_token) and [`cancellation_reason`](super::cancellation_reason) (generic crossings have no such scope).
pub struct TokioRuntime;

/// What a failed tokio task ends with.
impl generic::JoinError for ::tokio::task::JoinError {
    fn is_panic(&self) -> bool {
        ::tokio::task::JoinError::is_panic(self)
    }

    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        ::tokio::task::JoinError::into_panic(self)
    }
}

impl generic::Runtime for TokioRuntime {
    type JoinError = ::tokio::task::JoinError;
    type JoinHandle = JoinHandle<()>;

    fn spawn<F>(fut: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        handle().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> JoinHandle<()>
    where
        F: FnOnce() + Send + 'static,
    {
        handle().spawn_blocking(f)
    }
}

impl generic::ContextExt for TokioRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> std::pin::Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(TASK_LOCALS.scope(locals, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(TaskLocals::clone).ok()
    }
}

impl generic::SpawnLocalExt for TokioRuntime {
    /// Tokio's `spawn_local`: panics outside a `LocalSet`.
    fn spawn_local<F>(fut: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + 'static,
    {
        ::tokio::task::spawn_local(fut)
    }
}

impl generic::LocalContextExt for TokioRuntime {
    fn scope_local<F, R>(locals: TaskLocals, fut: F) -> std::pin::Pin<Box<dyn Future<Output = R>>>
    where
        F: Future<Output = R> + 'static,
    {
        Box::pin(TASK_LOCALS.scope(locals, fut))
    }
}
