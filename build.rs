//! Build script: with the `libfabric` feature, generates Rust bindings for the installed
//! libfabric headers (found with pkg-config) and compiles the C shim that exports libfabric's
//! `static inline` calls as real functions. libfabric itself is not linked: `src/rdma/ofi/sys.rs`
//! opens it when the `ofi` provider is first used. Without the feature it does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    executor_link_args();
    if std::env::var_os("CARGO_FEATURE_LIBFABRIC").is_some() {
        #[cfg(feature = "libfabric")]
        libfabric::build();
    }
}

/// `rfaas-executor`, the binary a fresh cold start execs, is linked as a position-dependent
/// executable (`-no-pie`): the dynamic loader then has no relative relocations to apply (about
/// 2,300 with PIE) and the process dirties no page of its relocated data to apply them, which
/// made it reach standby about 50 µs sooner on the project's VM (12 page faults fewer). What
/// it gives up is address-space randomisation of its own code (libraries, stacks and heap stay
/// randomised): an executor serves a single tenant, whose own code runs inside it anyway.
/// Every other binary keeps the toolchain's default (PIE).
///
/// It also loads `libm` at start (`--no-as-needed`: nothing in the executor itself calls it):
/// every Rust function library needs it, and a pooled executor then has it loaded before its
/// allocation comes instead of loading it with the library, on the cold start's path.
fn executor_link_args() {
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux {
        println!("cargo:rustc-link-arg-bin=rfaas-executor=-no-pie");
        println!(
            "cargo:rustc-link-arg-bin=rfaas-executor=-Wl,--push-state,--no-as-needed,-lm,--pop-state"
        );
    }
}

#[cfg(feature = "libfabric")]
mod libfabric {
    use std::path::PathBuf;

    const SHIM: &str = "src/rdma/ofi/shim.c";

    pub fn build() {
        println!("cargo:rerun-if-changed={SHIM}");
        // Headers only: libfabric is opened at run time (src/rdma/ofi/sys.rs), not linked, so a
        // binary built with the feature starts without loading it or what it pulls in (on
        // Debian, libinfinipath's constructor alone costs 0.1-0.25 s of every process start).
        let lib = match pkg_config::Config::new()
            .atleast_version("1.17")
            .cargo_metadata(false)
            .probe("libfabric")
        {
            Ok(lib) => lib,
            Err(e) => panic!(
                "feature `libfabric` needs libfabric 1.17 or newer with its headers \
                 (Debian: apt-get install libfabric-dev; scripts/setup.sh installs it): {e}"
            ),
        };
        let mut cc = cc::Build::new();
        cc.file(SHIM).warnings(true).opt_level(2);
        for p in &lib.include_paths {
            cc.include(p);
        }
        cc.compile("rfaas_ofi_shim");

        // Where pkg-config found the library: the second place sys.rs looks for it.
        if let Some(dir) = lib.link_paths.first() {
            println!("cargo:rustc-env=RFAAS_LIBFABRIC_LIBDIR={}", dir.display());
        } else {
            println!("cargo:rustc-env=RFAAS_LIBFABRIC_LIBDIR=");
        }
        let mut b = bindgen::Builder::default()
            .header(SHIM.replace("shim.c", "shim.h"))
            .allowlist_function("rfaas_fi_.*")
            .allowlist_type("fi_.*|fid_.*")
            .allowlist_var("FI_.*")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for p in &lib.include_paths {
            b = b.clang_arg(format!("-I{}", p.display()));
        }
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        b.generate()
            .expect("bindgen over the libfabric headers failed")
            .write_to_file(out.join("libfabric_sys.rs"))
            .expect("writing the libfabric bindings");
    }
}
