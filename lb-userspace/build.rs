//! Embeds the XDP object built by `cargo xtask build-ebpf` into `lbd`.
//!
//! The object is looked up at `$LB_EBPF_OBJECT`, else in the workspace's
//! target directory. When it is missing (a plain `cargo check`), an empty
//! object is embedded and `lbd` says at start how to build the real one.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("..").join("target"), PathBuf::from);
    let object = env::var_os("LB_EBPF_OBJECT").map_or_else(
        || target_dir.join("bpfel-unknown-none/release/lb-ebpf"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("lb-ebpf.o");
    let bytes = fs::read(&object).unwrap_or_else(|_| {
        println!(
            "cargo:warning=no XDP object at {}: run `cargo xtask build-ebpf` first",
            object.display()
        );
        Vec::new()
    });
    if let Err(e) = fs::write(&out, bytes) {
        panic!("cannot write {}: {e}", out.display());
    }
}
