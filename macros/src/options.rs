//! The options of `#[main(...)]`: `flavor = "multi_thread" | "current_thread"` and
//! `worker_threads = N`.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, Meta, Token};

/// Which tokio scheduler the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `Builder::new_multi_thread` (the default, as with `#[tokio::main]`).
    MultiThread,
    /// `Builder::new_current_thread`.
    CurrentThread,
}

/// The checked options of `#[main(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MainOptions {
    pub(crate) flavor: Flavor,
    pub(crate) worker_threads: Option<usize>,
}

/// Parses and checks the arguments of `#[main(...)]`.
pub(crate) fn parse_main(args: TokenStream) -> syn::Result<MainOptions> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut flavor: Option<(Flavor, Span)> = None;
    let mut worker_threads: Option<(usize, Span)> = None;
    for meta in metas {
        let nv = match meta {
            Meta::NameValue(nv) => nv,
            Meta::Path(path) => return Err(bare_word(&path)),
            Meta::List(list) => {
                return Err(syn::Error::new_spanned(
                    list,
                    "expected `flavor = \"...\"` or `worker_threads = N`",
                ))
            }
        };
        let key = nv.path.get_ident().map(ToString::to_string);
        match key.as_deref() {
            Some("flavor") => {
                if flavor.is_some() {
                    return Err(syn::Error::new_spanned(&nv, "`flavor` is set twice"));
                }
                let value = lit_str(&nv.value, "flavor")?;
                flavor = Some((parse_flavor(&value, nv.value.span())?, nv.span()));
            }
            Some("worker_threads") => {
                if worker_threads.is_some() {
                    return Err(syn::Error::new_spanned(
                        &nv,
                        "`worker_threads` is set twice",
                    ));
                }
                let n = lit_int(&nv.value)?;
                if n == 0 {
                    return Err(syn::Error::new_spanned(
                        &nv.value,
                        "`worker_threads` must be at least 1",
                    ));
                }
                worker_threads = Some((n, nv.span()));
            }
            Some("core_threads") => {
                return Err(syn::Error::new_spanned(
                    &nv.path,
                    "`core_threads` is now called `worker_threads`",
                ))
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    &nv.path,
                    "unknown option; expected `flavor` or `worker_threads`",
                ))
            }
        }
    }
    let flavor_value = flavor.map_or(Flavor::MultiThread, |(f, _)| f);
    if let (Flavor::CurrentThread, Some((_, span))) = (flavor_value, worker_threads) {
        return Err(syn::Error::new(
            span,
            "`worker_threads` needs `flavor = \"multi_thread\"` (a current-thread runtime has no workers)",
        ));
    }
    Ok(MainOptions {
        flavor: flavor_value,
        worker_threads: worker_threads.map(|(n, _)| n),
    })
}

/// The error for a bare word such as `#[main(current_thread)]`.
fn bare_word(path: &syn::Path) -> syn::Error {
    let word = path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    let msg = match word.as_str() {
        "current_thread" | "basic_scheduler" | "single_thread" => {
            "write `flavor = \"current_thread\"`".to_string()
        }
        "multi_thread" | "threaded_scheduler" => "write `flavor = \"multi_thread\"`".to_string(),
        "flavor" | "worker_threads" => format!("`{word}` needs a value: `{word} = ...`"),
        _ => "unknown option; expected `flavor = \"...\"` or `worker_threads = N`".to_string(),
    };
    syn::Error::new_spanned(path, msg)
}

/// A flavor name, with hints for the names older tokio versions used.
fn parse_flavor(value: &str, span: Span) -> syn::Result<Flavor> {
    match value {
        "multi_thread" => Ok(Flavor::MultiThread),
        "current_thread" => Ok(Flavor::CurrentThread),
        "single_thread" | "basic_scheduler" => Err(syn::Error::new(
            span,
            format!("`{value}` is called `current_thread`"),
        )),
        "threaded_scheduler" => Err(syn::Error::new(
            span,
            "`threaded_scheduler` is called `multi_thread`",
        )),
        _ => Err(syn::Error::new(
            span,
            format!("unknown flavor `{value}`; expected `multi_thread` or `current_thread`"),
        )),
    }
}

/// A string literal's value.
fn lit_str(expr: &Expr, key: &str) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        _ => Err(syn::Error::new_spanned(
            expr,
            format!("`{key}` takes a string literal, for example `{key} = \"current_thread\"`"),
        )),
    }
}

/// A non-negative integer literal's value.
fn lit_int(expr: &Expr) -> syn::Result<usize> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<usize>(),
        _ => Err(syn::Error::new_spanned(
            expr,
            "`worker_threads` takes an integer literal, for example `worker_threads = 4`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn err(args: TokenStream) -> String {
        parse_main(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults_to_multi_thread() {
        assert_eq!(
            parse_main(quote!()).unwrap(),
            MainOptions {
                flavor: Flavor::MultiThread,
                worker_threads: None
            }
        );
    }

    #[test]
    fn reads_flavor_and_worker_threads() {
        assert_eq!(
            parse_main(quote!(flavor = "multi_thread", worker_threads = 3)).unwrap(),
            MainOptions {
                flavor: Flavor::MultiThread,
                worker_threads: Some(3)
            }
        );
        assert_eq!(
            parse_main(quote!(flavor = "current_thread",))
                .unwrap()
                .flavor,
            Flavor::CurrentThread
        );
    }

    #[test]
    fn rejects_bad_input_with_a_clear_message() {
        assert!(err(quote!(flavor = "fast")).contains("unknown flavor `fast`"));
        assert!(err(quote!(flavor = "basic_scheduler")).contains("is called `current_thread`"));
        assert!(err(quote!(flavor = current_thread)).contains("takes a string literal"));
        assert!(err(quote!(current_thread)).contains("write `flavor = \"current_thread\"`"));
        assert!(err(quote!(flavor)).contains("needs a value"));
        assert!(err(quote!(worker_threads = 0)).contains("at least 1"));
        assert!(err(quote!(worker_threads = "4")).contains("integer literal"));
        assert!(err(quote!(flavor = "current_thread", worker_threads = 2))
            .contains("needs `flavor = \"multi_thread\"`"));
        assert!(
            err(quote!(flavor = "multi_thread", flavor = "multi_thread")).contains("set twice")
        );
        assert!(err(quote!(threads = 2)).contains("unknown option"));
        assert!(err(quote!(core_threads = 2)).contains("now called `worker_threads`"));
        assert!(err(quote!(flavor("x"))).contains("expected `flavor"));
    }
}
