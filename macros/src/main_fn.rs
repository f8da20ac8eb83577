//! `#[main]`: an `async fn main` run on a fresh event loop.

use crate::options::{parse_main, Flavor};
use crate::runtime::Runtime;
use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

/// Expands `#[main(args)] async fn name() -> R { body }` into a sync `fn name()` that hands the
/// body's future to `__macro_support`: for tokio, with the runtime builder the options ask for
/// (`main`, which calls `tokio::init` and `tokio::run`); for async-std, which takes no options,
/// to `main_on` with the runtime's type.
pub(crate) fn expand(
    args: TokenStream,
    item: TokenStream,
    krate: &TokenStream,
    runtime: Runtime,
) -> syn::Result<TokenStream> {
    let start =
        match runtime {
            Runtime::Tokio => {
                let options = parse_main(args)?;
                let builder = match options.flavor {
                    Flavor::MultiThread => quote!(#krate::tokio::Builder::new_multi_thread()),
                    Flavor::CurrentThread => quote!(#krate::tokio::Builder::new_current_thread()),
                };
                let workers = options
                    .worker_threads
                    .map(|n| quote!(builder.worker_threads(#n);));
                quote!(
                    let mut builder = #builder;
                    #workers
                    #krate::__macro_support::main(builder, main_future)
                )
            }
            Runtime::AsyncStd if !args.is_empty() => return Err(syn::Error::new_spanned(
                args,
                "`#[async_std::main]` takes no options (async-std's executor is configured with \
                 its environment variables, such as `ASYNC_STD_THREAD_COUNT`)",
            )),
            Runtime::AsyncStd => {
                let rt = runtime.type_path(krate);
                quote!(#krate::__macro_support::main_on::<#rt, _, _>(main_future))
            }
        };
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
    Ok(quote! {
        #(#attrs)*
        #vis fn #name() {
            async fn #name() #output #block
            let main_future = #name();
            #start
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
        expand(args, item, &quote!(::renamed), Runtime::Tokio)
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
            out.contains(":: renamed :: __macro_support :: main (builder , main_future)"),
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

    #[test]
    fn async_std_main_runs_on_the_async_std_runtime_and_takes_no_options() {
        let expand_std = |args, item| {
            expand(args, item, &quote!(::renamed), Runtime::AsyncStd)
                .map(|t| t.to_string())
                .map_err(|e| e.to_string())
        };
        let out = expand_std(
            quote!(),
            quote!(
                async fn main() -> pyo3::PyResult<()> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        assert!(
            out.contains(
                ":: renamed :: __macro_support :: main_on :: < :: renamed :: async_std :: \
                 AsyncStdRuntime , _ , _ > (main_future)"
            ),
            "{out}"
        );
        assert!(!out.contains("tokio"), "{out}");
        let e = expand_std(
            quote!(flavor = "current_thread"),
            quote!(
                async fn main() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("`#[async_std::main]` takes no options"), "{e}");
        let e = expand_std(
            quote!(),
            quote!(
                fn main() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("needs an `async fn`"), "{e}");
    }
}
