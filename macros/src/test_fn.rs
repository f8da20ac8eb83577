//! `#[test]`: a plain libtest `#[test]` that runs the body on a fresh event loop, plus a
//! registration for the bridge's `testing::main()` harness (`harness = false` binaries).

use crate::runtime::Runtime;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Attribute, FnArg, ItemFn, Lit, Meta};

/// How the test body becomes the future a harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `async fn name()`: the future itself.
    Async,
    /// `fn name()`: run on a blocking thread of the runtime.
    Blocking,
    /// `fn name(event_loop: Py<PyAny>)`: the same, given the test's event loop.
    BlockingWithLoop,
}

/// The user's attributes, sorted by the item they belong on.
#[derive(Default)]
struct Attrs {
    /// `#[cfg]`/`#[cfg_attr]`: on every generated item.
    cfg: Vec<Attribute>,
    /// `#[ignore]`, `#[should_panic]`: on the libtest function, and known to the registration.
    libtest: Vec<Attribute>,
    /// Everything else (docs, lints): on the user's function.
    rest: Vec<Attribute>,
    ignore: bool,
    /// `Some("")` for a bare `#[should_panic]`, `Some(expected)` otherwise.
    should_panic: Option<String>,
}

/// Expands the test attribute. The user's function keeps its name and body, nested inside a
/// hidden `fn __pyo3_async_bridge_test_<name>() -> TestFuture` (its shape in the peer's
/// `testing::Test`), which both the libtest `#[test] fn <name>()` and the registration call.
pub(crate) fn expand(
    args: TokenStream,
    item: TokenStream,
    krate: &TokenStream,
    runtime: Runtime,
) -> syn::Result<TokenStream> {
    if !args.is_empty() {
        let how = match runtime {
            Runtime::Tokio => "configure the runtime with `tokio::init` in a `#[main]`",
            Runtime::AsyncStd => "async-std is configured with its environment variables",
        };
        return Err(syn::Error::new_spanned(
            args,
            format!(
                "`#[test]` takes no options: every test runs on the bridge's one runtime, on a \
                 fresh event loop ({how})"
            ),
        ));
    }
    let func: ItemFn = syn::parse2(item)?;
    let kind = classify(&func, runtime)?;
    let rt = runtime.type_path(krate);
    let attrs = split_attrs(&func.attrs)?;
    let ItemFn {
        vis, sig, block, ..
    } = func;
    let name = &sig.ident;
    let helper = format_ident!("__pyo3_async_bridge_test_{}", name);
    let support = quote!(#krate::__macro_support);
    let make = match kind {
        Kind::Async => quote!(#support::async_test(#name())),
        Kind::Blocking => quote!(#support::blocking_test::<#rt, _, _>(#name)),
        Kind::BlockingWithLoop => quote!(#support::blocking_test_with_loop::<#rt, _, _>(#name)),
    };
    let Attrs {
        cfg,
        libtest,
        rest,
        ignore,
        should_panic,
    } = attrs;
    let should_panic = match should_panic {
        Some(expected) => quote!(::core::option::Option::Some(#expected)),
        None => quote!(::core::option::Option::None),
    };
    Ok(quote! {
        #(#cfg)*
        #(#libtest)*
        #[::core::prelude::v1::test]
        #vis fn #name() {
            #support::run_test::<#rt>(#helper)
        }

        #(#cfg)*
        #[doc(hidden)]
        #[allow(dead_code, non_snake_case)]
        fn #helper() -> #support::TestFuture {
            #(#rest)*
            #sig #block
            #make
        }

        #(#cfg)*
        #krate::__register_test! {
            name: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
            test_fn: #helper,
            ignore: #ignore,
            should_panic: #should_panic,
            runner: #support::run_on_fresh_loop::<#rt>,
        }
    })
}

/// Which of the accepted shapes the function has; a clear error for any other.
fn classify(func: &ItemFn, runtime: Runtime) -> syn::Result<Kind> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a test function takes no generics",
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(
            r,
            "a test function takes no `self`",
        ));
    }
    match (sig.asyncness.is_some(), sig.inputs.len()) {
        (true, 0) => Ok(Kind::Async),
        (true, _) => Err(syn::Error::new_spanned(
            &sig.inputs,
            format!(
                "an async test takes no arguments (inside it, `{}::get_current_loop(py)` is the \
                 test's event loop); only a sync test may take `event_loop: Py<PyAny>`",
                runtime.module()
            ),
        )),
        (false, 0) => Ok(Kind::Blocking),
        (false, 1) => Ok(Kind::BlockingWithLoop),
        (false, _) => Err(syn::Error::new_spanned(
            &sig.inputs,
            "a sync test takes no arguments or one, `event_loop: Py<PyAny>`",
        )),
    }
}

/// Sorts the attributes (see [`Attrs`]); a plain `#[test]` next to ours is an error, since the
/// function would run twice.
fn split_attrs(attrs: &[Attribute]) -> syn::Result<Attrs> {
    let mut out = Attrs::default();
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("cfg") || path.is_ident("cfg_attr") {
            out.cfg.push(attr.clone());
        } else if path.is_ident("ignore") {
            out.ignore = true;
            out.libtest.push(attr.clone());
        } else if path.is_ident("should_panic") {
            out.should_panic = Some(expected_message(attr)?);
            out.libtest.push(attr.clone());
        } else if path.is_ident("test") || path.segments.last().is_some_and(|s| s.ident == "test") {
            return Err(syn::Error::new_spanned(
                attr,
                "remove this attribute: the bridge's `#[test]` already makes the function a test",
            ));
        } else {
            out.rest.push(attr.clone());
        }
    }
    Ok(out)
}

/// The `expected` text of `#[should_panic]`, `#[should_panic = "..."]` or
/// `#[should_panic(expected = "...")]`; empty when none is given.
fn expected_message(attr: &Attribute) -> syn::Result<String> {
    let lit_str = |expr: &syn::Expr| match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    };
    match &attr.meta {
        Meta::Path(_) => Ok(String::new()),
        Meta::NameValue(nv) => lit_str(&nv.value),
        Meta::List(_) => {
            let mut expected = None;
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("expected") {
                    expected = Some(lit_str(&meta.value()?.parse()?)?);
                    Ok(())
                } else {
                    Err(meta.error("expected `expected = \"...\"`"))
                }
            })?;
            Ok(expected.unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(tokens: TokenStream) -> ItemFn {
        syn::parse2(tokens).unwrap()
    }

    fn expand_str(args: TokenStream, tokens: TokenStream) -> Result<String, String> {
        expand(args, tokens, &quote!(::renamed), Runtime::Tokio)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn classifies_the_three_accepted_shapes() {
        assert_eq!(
            classify(
                &item(quote!(
                    async fn t() {}
                )),
                Runtime::Tokio
            )
            .unwrap(),
            Kind::Async
        );
        assert_eq!(
            classify(
                &item(quote!(
                    fn t() {}
                )),
                Runtime::Tokio
            )
            .unwrap(),
            Kind::Blocking
        );
        assert_eq!(
            classify(
                &item(quote!(
                    fn t(event_loop: Py<PyAny>) {}
                )),
                Runtime::Tokio
            )
            .unwrap(),
            Kind::BlockingWithLoop
        );
    }

    #[test]
    fn rejects_other_shapes_with_a_clear_message() {
        let e = |t| classify(&item(t), Runtime::Tokio).unwrap_err().to_string();
        assert!(e(quote!(
            async fn t(event_loop: Py<PyAny>) {}
        ))
        .contains("an async test takes no arguments"));
        assert!(e(quote!(
            fn t(a: u8, b: u8) {}
        ))
        .contains("no arguments or one"));
        assert!(e(quote!(
            fn t<T>() {}
        ))
        .contains("no generics"));
        let e = expand_str(
            quote!(flavor = "current_thread"),
            quote!(
                async fn t() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("takes no options"), "{e}");
        let e = expand_str(
            quote!(),
            quote!(
                #[test]
                async fn t() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("already makes the function a test"), "{e}");
        let e = expand_str(
            quote!(),
            quote!(
                #[tokio::test]
                async fn t() {}
            ),
        )
        .unwrap_err();
        assert!(e.contains("already makes the function a test"), "{e}");
        let e = expand_str(
            quote!(),
            quote!(
                struct S;
            ),
        )
        .unwrap_err();
        assert!(e.contains("expected `fn`"), "{e}");
    }

    #[test]
    fn sorts_attributes_and_reads_should_panic() {
        let f = item(quote! {
            #[cfg(unix)]
            #[ignore = "slow"]
            #[should_panic(expected = "boom")]
            #[allow(unused)]
            /// docs
            fn t() {}
        });
        let a = split_attrs(&f.attrs).unwrap();
        assert_eq!((a.cfg.len(), a.libtest.len(), a.rest.len()), (1, 2, 2));
        assert!(a.ignore);
        assert_eq!(a.should_panic.as_deref(), Some("boom"));
        let bare = split_attrs(
            &item(quote!(
                #[should_panic]
                fn t() {}
            ))
            .attrs,
        )
        .unwrap();
        assert_eq!(bare.should_panic.as_deref(), Some(""));
        let eq = split_attrs(
            &item(quote!(
                #[should_panic = "x"]
                fn t() {}
            ))
            .attrs,
        )
        .unwrap();
        assert_eq!(eq.should_panic.as_deref(), Some("x"));
        let bad = split_attrs(
            &item(quote!(
                #[should_panic(reason = "x")]
                fn t() {}
            ))
            .attrs,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn expands_to_a_libtest_test_and_a_registration_through_the_resolved_crate() {
        let out = expand_str(
            quote!(),
            quote!(
                #[ignore]
                fn t(event_loop: Py<PyAny>) -> PyResult<()> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        assert!(
            out.contains("# [ignore] # [:: core :: prelude :: v1 :: test] fn t ()"),
            "{out}"
        );
        assert!(
            out.contains(
                ":: renamed :: __macro_support :: run_test :: < :: renamed :: tokio :: \
                 TokioRuntime > (__pyo3_async_bridge_test_t)"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                ":: renamed :: __macro_support :: blocking_test_with_loop :: < :: renamed :: \
                 tokio :: TokioRuntime , _ , _ > (t)"
            ),
            "{out}"
        );
        assert!(out.contains(":: renamed :: __register_test !"), "{out}");
        assert!(out.contains("ignore : true"), "{out}");
        assert!(
            !out.contains("pyo3_async_bridge ::"),
            "the crate name is never hard-coded: {out}"
        );
    }

    #[test]
    fn async_std_tests_run_and_register_on_the_async_std_runtime() {
        let out = expand(
            quote!(),
            quote!(
                fn t() {}
            ),
            &quote!(::renamed),
            Runtime::AsyncStd,
        )
        .unwrap()
        .to_string();
        let rt = ":: renamed :: async_std :: AsyncStdRuntime";
        for call in [
            format!("run_test :: < {rt} > (__pyo3_async_bridge_test_t)"),
            format!("blocking_test :: < {rt} , _ , _ > (t)"),
            format!("runner : :: renamed :: __macro_support :: run_on_fresh_loop :: < {rt} >"),
        ] {
            assert!(out.contains(&call), "{call} in {out}");
        }
        assert!(!out.contains("tokio"), "{out}");
        let e = classify(
            &item(quote!(
                async fn t(event_loop: Py<PyAny>) {}
            )),
            Runtime::AsyncStd,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`async_std::get_current_loop(py)`"), "{e}");
    }
}
