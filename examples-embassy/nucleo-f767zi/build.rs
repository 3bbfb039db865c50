//! Puts memory.x on the linker path, links cortex-m-rt's and defmt's
//! scripts, and re-runs when the build-time server address changes.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DFLOCKD_SERVER");
    println!("cargo:rerun-if-env-changed=DFLOCKD_TLS_SERVER_NAME");
    println!("cargo:rerun-if-env-changed=DFLOCKD_CA_DER");

    // The CA certificate (DER) for the TLS variant, from DFLOCKD_CA_DER at
    // build time; empty otherwise (the firmware then refuses to connect).
    let ca = match env::var_os("DFLOCKD_CA_DER") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            fs::read(&path).expect("read DFLOCKD_CA_DER")
        }
        None => Vec::new(),
    };
    fs::write(out.join("ca.der"), ca).expect("write ca.der");

    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
}
