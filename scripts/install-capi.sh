#!/usr/bin/env bash
# Installs the C API built by cargo (librfaas.so, librfaas.a), its header rfaas.h, the Fortran
# module's source rfaas.f90 (compiled with the program, so any Fortran compiler fits) and
# rfaas.pc into PREFIX. `make install PREFIX=...` builds the release library and runs this; tests run it on
# their debug build.
#
#   scripts/install-capi.sh PREFIX [BUILD_DIR]     BUILD_DIR: target/release (default)
#
# Then: mpicc app.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs rfaas)
# The shared library is found at run time through the rpath that rfaas.pc puts in the link
# line, so an executable runs without the source tree and without LD_LIBRARY_PATH.
set -euo pipefail

if (($# < 1 || $# > 2)); then
    echo "usage: $0 PREFIX [BUILD_DIR]" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$1"
build="${2:-$root/target/release}"
# cargo uplifts the libraries into BUILD_DIR when the crate is built on its own, and leaves
# them in BUILD_DIR/deps when they are built for its tests: take the newer.
pick() {
    local a="$build/$1" b="$build/deps/$1"
    if [[ -f "$b" && ( ! -f "$a" || "$b" -nt "$a" ) ]]; then a="$b"; fi
    if [[ ! -f "$a" ]]; then
        echo "$build/$1 is missing: build it first (cargo build --release -p rfaas-c)" >&2
        exit 1
    fi
    echo "$a"
}
so="$(pick librfaas_c.so)"
ar="$(pick librfaas_c.a)"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/bindings/c/Cargo.toml" | head -1)"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
# cargo names them after the crate (rfaas_c); the library users link is rfaas. The shared
# library has that name as its SONAME (bindings/c/build.rs).
install -m 0755 "$so" "$prefix/lib/librfaas.so"
install -m 0644 "$ar" "$prefix/lib/librfaas.a"
install -m 0644 "$root/bindings/c/include/rfaas.h" "$prefix/include/rfaas.h"
install -m 0644 "$root/bindings/fortran/rfaas.f90" "$prefix/include/rfaas.f90"

# The library links Open MPI (the session API takes an MPI_Comm, and rfaas.h includes mpi.h).
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" \
    "$root/bindings/c/rfaas.pc.in" > "$prefix/lib/pkgconfig/rfaas.pc"
echo "installed rfaas $version into $prefix (lib/librfaas.{so,a}, include/rfaas.h, include/rfaas.f90, lib/pkgconfig/rfaas.pc)"
