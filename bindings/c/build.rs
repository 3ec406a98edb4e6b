//! The shared library is installed as `librfaas.so` (cargo writes `librfaas_c.so`): give it
//! that SONAME, so that programs linked against it ask for `librfaas.so` at run time.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librfaas.so");
}
