//! Compiles the deliberately broken variants of `state.rs` (its `mutants` module) into this
//! crate, and only here: the library itself never sets `bridge_mutants`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bridge_mutants)");
    println!("cargo::rustc-cfg=bridge_mutants");
    println!("cargo::rerun-if-changed=build.rs");
}
