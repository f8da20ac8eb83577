//! Which of the bridge's runtimes an attribute belongs to.

use proc_macro2::TokenStream;
use quote::quote;

/// The runtime an attribute runs on: the bridge module it is exported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    /// `tokio::main`, `tokio::test`.
    Tokio,
    /// `async_std::main`, `async_std::test`.
    AsyncStd,
}

impl Runtime {
    /// The bridge module, as the user writes it in the attribute's path.
    pub(crate) fn module(self) -> &'static str {
        match self {
            Runtime::Tokio => "tokio",
            Runtime::AsyncStd => "async_std",
        }
    }

    /// The bridge's `generic` runtime type, which the expansion hands to `__macro_support`.
    pub(crate) fn type_path(self, krate: &TokenStream) -> TokenStream {
        match self {
            Runtime::Tokio => quote!(#krate::tokio::TokioRuntime),
            Runtime::AsyncStd => quote!(#krate::async_std::AsyncStdRuntime),
        }
    }
}
