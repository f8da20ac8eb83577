//! The `#[main]` and `#[test]` attributes of `pyo3-async-bridge`.
//!
//! Use them through the bridge's `attributes` feature, as `#[pyo3_async_bridge::tokio::main]`
//! and `#[pyo3_async_bridge::tokio::test]`, or `async_std::main` and `async_std::test` (or under whatever name the dependency has in the
//! user's `Cargo.toml`: the expansion finds that name with `proc-macro-crate`, so a user who
//! keeps `pyo3-async-runtimes = { package = "pyo3-async-bridge", ... }` writes
//! `#[pyo3_async_runtimes::tokio::test]`).
//!
//! The expansions are thin: they call hidden functions of the bridge (`__macro_support`), where
//! the behaviour lives and is tested. Every function here works on `proc_macro2` tokens, so the
//! parsing is unit-tested without a compiler.

use proc_macro::TokenStream;

mod krate;
mod main_fn;
mod options;
mod runtime;
mod test_fn;

use runtime::Runtime;

/// Runs an `async fn main` on a fresh asyncio event loop, with the bridge's tokio runtime.
///
/// Options: `flavor = "multi_thread"` (the default) or `"current_thread"`, and
/// `worker_threads = N` (multi-thread only). See the bridge's `tokio::main` docs.
#[proc_macro_attribute]
pub fn tokio_main(args: TokenStream, item: TokenStream) -> TokenStream {
    let krate = krate::bridge_path();
    main_fn::expand(args.into(), item.into(), &krate, Runtime::Tokio)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks a test: a plain `#[test]` under cargo's harness and `cargo nextest`, each run on a
/// fresh event loop, and also registered for the bridge's `testing::main()` harness. See the
/// bridge's `tokio::test` docs.
#[proc_macro_attribute]
pub fn tokio_test(args: TokenStream, item: TokenStream) -> TokenStream {
    let krate = krate::bridge_path();
    test_fn::expand(args.into(), item.into(), &krate, Runtime::Tokio)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Runs an `async fn main` on a fresh asyncio event loop, with async-std. Takes no options. See
/// the bridge's `async_std::main` docs.
#[proc_macro_attribute]
pub fn async_std_main(args: TokenStream, item: TokenStream) -> TokenStream {
    let krate = krate::bridge_path();
    main_fn::expand(args.into(), item.into(), &krate, Runtime::AsyncStd)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks a test run with async-std, as `tokio_test` does with tokio. See the bridge's
/// `async_std::test` docs.
#[proc_macro_attribute]
pub fn async_std_test(args: TokenStream, item: TokenStream) -> TokenStream {
    let krate = krate::bridge_path();
    test_fn::expand(args.into(), item.into(), &krate, Runtime::AsyncStd)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
