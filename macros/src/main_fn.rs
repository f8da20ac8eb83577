//! `#[main]`: an `async fn main` run on a fresh event loop.

use crate::options::{parse_main, Flavor};
use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

/// Expands `#[main(args)] async fn name() -> R { body }` into a sync `fn name()` that builds
/// the runtime builder the options ask for and hands it, with the body's future, to
/// `__macro_support::main` (which initialises Python, calls `tokio::init` and `tokio::run`).
pub(crate) fn expand(
    args: TokenStream,
    item: TokenStream,
    krate: &TokenStream,
) -> syn::Result<TokenStream> {
    let options = parse_main(args)?;
    let func: ItemFn = syn::parse2(item)?;
    check(&func)?;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let name = &sig.ident;
    let output = &sig.output;
    let builder = match options.flavor {
        Flavor::MultiThread => quote!(#krate::tokio::Builder::new_multi_thread()),
        Flavor::CurrentThread => quote!(#krate::tokio::Builder::new_current_thread()),
    };
    let workers = options
        .worker_threads
        .map(|n| quote!(builder.worker_threads(#n);));
    Ok(quote! {
        #(#attrs)*
        #vis fn #name() {
            async fn #name() #output #block
            let mut builder = #builder;
            #workers
            #krate::__macro_support::main(builder, #name())
        }
    })
}

/// What `#[main]` cannot take: a sync fn, arguments, generics.
fn check(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "`#[main]` needs an `async fn` (the async keyword is missing)",
        ));
    }
    if !sig.inputs.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "`#[main]` takes a function without arguments",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "`#[main]` takes a function without generics",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: TokenStream, item: TokenStream) -> Result<String, String> {
        expand(args, item, &quote!(::renamed))
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn builds_the_requested_runtime_through_the_resolved_crate() {
        let out = expand_str(
            quote!(flavor = "multi_thread", worker_threads = 2),
            quote!(
                async fn main() -> pyo3::PyResult<()> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        assert!(
            out.contains(":: renamed :: tokio :: Builder :: new_multi_thread ()"),
            "{out}"
        );
        assert!(out.contains("builder . worker_threads (2usize)"), "{out}");
        assert!(
            out.contains(":: renamed :: __macro_support :: main (builder , main ())"),
            "{out}"
        );
        assert!(
            !out.contains("pyo3_async_bridge"),
            "the crate name is never hard-coded: {out}"
        );

        let out = expand_str(
            quote!(flavor = "current_thread"),
            quote!(
                async fn main() {}
            ),
        )
        .unwrap();
        assert!(out.contains("new_current_thread"), "{out}");
        assert!(!out.contains("worker_threads"), "{out}");
    }

    #[test]
    fn rejects_what_main_cannot_take() {
        let e = expand_str(
            quote!(),
            quote!(
                fn main() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("needs an `async fn`"), "{e}");
        let e = expand_str(
            quote!(),
            quote!(
                async fn main(x: u8) {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("without arguments"), "{e}");
        let e = expand_str(
            quote!(),
            quote!(
                async fn main<T>() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("without generics"), "{e}");
        let e = expand_str(
            quote!(flavor = "x"),
            quote!(
                async fn main() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("unknown flavor"), "{e}");
    }
}
