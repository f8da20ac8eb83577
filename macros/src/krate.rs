//! The path under which the expanding crate reaches `pyo3-async-bridge`.

use proc_macro2::{Span, TokenStream};
use proc_macro_crate::{crate_name, FoundCrate};
use quote::{format_ident, quote};

/// The package name the attributes belong to.
const PACKAGE: &str = "pyo3-async-bridge";

/// `::<name>`, where `<name>` is what the user's `Cargo.toml` calls the bridge (a renamed
/// dependency keeps its new name). Inside the bridge's own package (unit tests, integration
/// tests, examples, doctests) the name is `pyo3_async_bridge`, which the library also declares
/// for itself (`extern crate self as pyo3_async_bridge`).
///
/// When the bridge cannot be found in the manifest, the expansion is a `compile_error!` saying
/// so, never a guessed path.
pub(crate) fn bridge_path() -> TokenStream {
    match crate_name(PACKAGE) {
        Ok(found) => path_for(&found),
        Err(e) => {
            let msg = format!(
                "the pyo3-async-bridge attributes could not find `{PACKAGE}` among this crate's \
                 dependencies ({e}); add it to Cargo.toml (under any name)"
            );
            quote!(::core::compile_error!(#msg))
        }
    }
}

/// The path for a crate `proc-macro-crate` found.
fn path_for(found: &FoundCrate) -> TokenStream {
    let name = match found {
        FoundCrate::Itself => format_ident!("pyo3_async_bridge"),
        FoundCrate::Name(name) => proc_macro2::Ident::new(name, Span::call_site()),
    };
    quote!(::#name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_dependency_keeps_its_name() {
        let path = path_for(&FoundCrate::Name("pyo3_async_runtimes".into()));
        assert_eq!(path.to_string(), ":: pyo3_async_runtimes");
    }

    #[test]
    fn own_package_uses_the_library_name() {
        assert_eq!(
            path_for(&FoundCrate::Itself).to_string(),
            ":: pyo3_async_bridge"
        );
    }
}
