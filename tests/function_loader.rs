//! Function libraries end to end: the example Rust library (`jobs/functions`, built with cargo)
//! and the example C library (`jobs/functions-c`, built with the system `cc`) are loaded from
//! their bytes through the content-hash cache, resolved by name and called.
//!
//! The Rust library comes from `common::functions_library()` (shared with the process tests):
//! `$RFAAS_TEST_FUNCTIONS_LIB`, a `target/<profile>/libfunctions.so` newer than its sources, or
//! one built by the test itself, so a clean checkout needs only `cargo test --workspace`.
//!
//! `segfault` is never called here: it would kill the test process (the executor tests call it in
//! a separate process).

// One test calls a macro-exported function through its plain rFaaS entry, as a foreign host
// would: that is a raw `dlsym` + call.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rfaas::function::{
    ContentHash, FunctionError, FunctionLibrary, FunctionStatus, LibraryCache, LibraryStore,
    RawFunction, StoreOutcome,
};

/// The example Rust function library (`libfunctions.so`).
fn rust_library() -> &'static [u8] {
    static LIB: OnceLock<Vec<u8>> = OnceLock::new();
    LIB.get_or_init(|| common::functions_library().to_vec())
}

/// The example C function library (`libfunctions_c.so`), built with the system compiler with the
/// flags of `jobs/functions-c/Makefile`.
fn c_library() -> &'static [u8] {
    static LIB: OnceLock<Vec<u8>> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("functions-c");
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("libfunctions_c.{}.so", std::process::id()));
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        let status = Command::new(cc)
            .args([
                "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
            ])
            .arg("-fvisibility=hidden")
            .arg("-o")
            .arg(&out)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/functions-c/functions.c"))
            .status()
            .expect("run the system C compiler (cc)");
        assert!(status.success(), "cc failed to build functions.c");
        let bytes = fs::read(&out).unwrap();
        let _ = fs::remove_file(&out);
        bytes
    })
}

/// A private cache directory (removed at the end of the test).
fn cache() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// 64-bit FNV-1a, written independently of both example libraries.
fn fnv1a(bytes: &[u8]) -> [u8; 8] {
    let mut h: u64 = 14_695_981_039_346_656_037;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(1_099_511_628_211);
    }
    h.to_le_bytes()
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

const SIZES: [usize; 4] = [0, 1, 4096, 1 << 20];

#[test]
fn rust_functions_resolve_in_request_order_and_compute() {
    let dir = cache();
    let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    assert_eq!(lib.hash(), ContentHash::of(rust_library()));
    let names = [
        "echo",
        "checksum",
        "empty",
        "sleep_us",
        "black_scholes",
        "panic",
    ];
    let table = lib.resolve(&names).unwrap();
    assert_eq!(table.names().collect::<Vec<_>>(), names);
    assert!((0..table.len()).all(|i| table.get(i).unwrap().is_rust()));

    for len in SIZES {
        let input = payload(len);
        let mut output = vec![0u8; len.max(8)];
        // echo
        let mut slot = input.clone();
        assert_eq!(
            table.call(0, &mut slot, &mut output),
            FunctionStatus::Ok(len as u32)
        );
        assert_eq!(&output[..len], &input[..]);
        // checksum
        let mut slot = input.clone();
        assert_eq!(table.call(1, &mut slot, &mut output), FunctionStatus::Ok(8));
        assert_eq!(output[..8], fnv1a(&input), "checksum of {len} bytes");
        // empty: returns the input length, writes nothing
        output.fill(0xAB);
        let mut slot = input.clone();
        assert_eq!(
            table.call(2, &mut slot, &mut output),
            FunctionStatus::Ok(len as u32)
        );
        assert!(output.iter().all(|&b| b == 0xAB));
    }

    // sleep_us: sleeps for the u64 at the start of the input, then echoes it.
    let mut input = 3000u64.to_le_bytes().to_vec();
    input.extend_from_slice(b"after");
    let mut output = [0u8; 32];
    let start = Instant::now();
    assert_eq!(
        table.call(3, &mut input.clone(), &mut output),
        FunctionStatus::Ok(13)
    );
    assert!(start.elapsed() >= Duration::from_micros(3000));
    assert_eq!(&output[..13], &input[..]);
}

/// `[spot, strike, rate, volatility, time]` as 40 little-endian bytes.
fn option(o: [f64; 5]) -> Vec<u8> {
    o.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f64_at(bytes: &[u8], i: usize) -> f64 {
    f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap())
}

#[test]
fn black_scholes_matches_textbook_values() {
    let dir = cache();
    let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    let table = lib.resolve(&["black_scholes"]).unwrap();

    // Hull's textbook example and two more, checked against closed-form values computed with
    // an independent implementation (Python, math.erfc).
    let cases = [
        (
            [100.0, 100.0, 0.05, 0.2, 1.0],
            10.450_583_572_185_565,
            5.573_526_022_256_971,
        ),
        (
            [42.0, 40.0, 0.1, 0.2, 0.5],
            4.759_422_392_871_535,
            0.808_599_372_900_095_8,
        ),
        (
            [100.0, 120.0, 0.03, 0.35, 2.0],
            14.931_443_031_477_379,
            27.943_187_061_587_217,
        ),
    ];
    let mut input: Vec<u8> = cases.iter().flat_map(|(o, _, _)| option(*o)).collect();
    input.extend_from_slice(&[1, 2, 3]); // a partial record is ignored
    let mut output = vec![0u8; 4096];
    assert_eq!(
        table.call(0, &mut input, &mut output),
        FunctionStatus::Ok(16 * cases.len() as u32)
    );
    for (i, (o, call, put)) in cases.iter().enumerate() {
        let (c, p) = (f64_at(&output, 2 * i), f64_at(&output, 2 * i + 1));
        assert!((c - call).abs() < 1e-9, "call {o:?}: {c} vs {call}");
        assert!((p - put).abs() < 1e-9, "put {o:?}: {p} vs {put}");
    }

    // A 1 MiB batch: put-call parity holds for every option.
    let mut input: Vec<u8> = (0..(1 << 20) / 40)
        .flat_map(|i| {
            let x = (i % 1000) as f64 / 1000.0;
            option([
                50.0 + 100.0 * x,
                100.0,
                0.01 + 0.05 * x,
                0.1 + 0.5 * x,
                0.1 + 2.0 * x,
            ])
        })
        .collect();
    let records = input.len() / 40;
    let reference = input.clone();
    let mut output = vec![0u8; 1 << 20];
    assert_eq!(
        table.call(0, &mut input, &mut output),
        FunctionStatus::Ok(16 * records as u32)
    );
    for r in 0..records {
        let o = &reference[40 * r..40 * r + 40];
        let (s, k, rate, t) = (f64_at(o, 0), f64_at(o, 1), f64_at(o, 2), f64_at(o, 4));
        let (c, p) = (f64_at(&output, 2 * r), f64_at(&output, 2 * r + 1));
        let parity = s - k * (-rate * t).exp();
        assert!(
            (c - p - parity).abs() < 1e-9,
            "record {r}: {c} {p} {parity}"
        );
        assert!(c >= 0.0 && p >= 0.0);
    }

    // Output capacity one record short: too large, nothing computed.
    let mut input = option(cases[0].0);
    let mut output = [0u8; 15];
    assert_eq!(
        table.call(0, &mut input, &mut output),
        FunctionStatus::OutputTooLarge(16)
    );
    assert_eq!(output, [0; 15]);
}

#[test]
fn request_order_defines_indices() {
    let dir = cache();
    let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    let a = lib.resolve(&["echo", "checksum"]).unwrap();
    let b = lib.resolve(&["checksum", "echo"]).unwrap();
    let mut out = [0u8; 16];
    assert_eq!(
        a.call(0, &mut b"abc".to_vec(), &mut out),
        FunctionStatus::Ok(3)
    );
    assert_eq!(
        b.call(0, &mut b"abc".to_vec(), &mut out),
        FunctionStatus::Ok(8)
    );
    // The same name twice is two indices for one function.
    let c = lib.resolve(&["echo", "echo"]).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(
        c.call(1, &mut b"xy".to_vec(), &mut out),
        FunctionStatus::Ok(2)
    );
}

#[test]
fn unknown_and_invalid_names_are_typed_errors() {
    let dir = cache();
    let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    match lib.resolve(&["echo", "no_such_function", "checksum"]) {
        Err(FunctionError::UnknownFunction { name }) => assert_eq!(name, "no_such_function"),
        other => panic!("expected UnknownFunction, got {other:?}"),
    }
    let msg = lib.resolve(&["no_such_function"]).unwrap_err().to_string();
    assert!(msg.contains("no_such_function"), "{msg}");
    assert!(
        !msg.contains(".so") && !msg.contains('/'),
        "leaks library details: {msg}"
    );

    // Symbols the library only imports (found by dlsym in its dependencies) are not its functions.
    for name in ["malloc", "memcpy", "rust_begin_unwind"] {
        assert!(
            matches!(
                lib.function(name),
                Err(FunctionError::UnknownFunction { .. })
            ),
            "{name}"
        );
    }
    for name in ["", "echo\0", "__rfaas_ext_v1_echo"] {
        assert!(
            matches!(lib.function(name), Err(FunctionError::InvalidName { .. })),
            "{name:?}"
        );
    }
    // An index the allocation never resolved.
    let table = lib.resolve(&["echo"]).unwrap();
    let mut out = [0u8; 4];
    assert_eq!(
        table.call(1, &mut [], &mut out),
        FunctionStatus::UnknownFunction
    );
}

#[test]
fn output_larger_than_capacity_is_reported_not_written() {
    let dir = cache();
    let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    let table = lib.resolve(&["echo", "checksum", "empty"]).unwrap();
    for len in [1usize, 4096, 1 << 20] {
        let mut input = payload(len);
        // One byte over the capacity (the buffer is exactly the capacity).
        let mut output = vec![0u8; len - 1];
        assert_eq!(
            table.call(0, &mut input, &mut output),
            FunctionStatus::OutputTooLarge(len as u32)
        );
        assert!(
            output.iter().all(|&b| b == 0),
            "echo wrote past a too-small capacity"
        );
        assert_eq!(
            table.call(2, &mut input, &mut output),
            FunctionStatus::OutputTooLarge(len as u32)
        );
    }
    let mut output = [0u8; 7];
    assert_eq!(
        table.call(1, &mut b"x".to_vec(), &mut output),
        FunctionStatus::OutputTooLarge(8)
    );
    assert_eq!(output, [0; 7]);
}

#[test]
fn panic_is_a_status_and_the_process_survives() {
    let dir = cache();
    let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    let table = lib.resolve(&["panic", "echo"]).unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let table = table.clone();
            std::thread::spawn(move || {
                let mut out = vec![0u8; 64];
                for i in 0..10u8 {
                    let mut input = vec![t, i];
                    assert_eq!(
                        table.call(0, &mut input, &mut out),
                        FunctionStatus::Panicked
                    );
                    assert_eq!(table.call(1, &mut input, &mut out), FunctionStatus::Ok(2));
                    assert_eq!(out[..2], [t, i]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn c_library_works_unchanged() {
    let dir = cache();
    let lib = FunctionLibrary::load(c_library(), dir.path()).unwrap();
    let table = lib.resolve(&["checksum_c", "echo_c", "empty_c"]).unwrap();
    assert!((0..3).all(|i| !table.get(i).unwrap().is_rust()));
    assert!(table.get(0).unwrap().raw().is_some());
    let rust = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    let rust_checksum = rust.function("checksum").unwrap();
    for len in SIZES {
        let input = payload(len);
        let mut output = vec![0u8; len.max(8)];
        assert_eq!(
            table.call(0, &mut input.clone(), &mut output),
            FunctionStatus::Ok(8)
        );
        assert_eq!(output[..8], fnv1a(&input));
        let mut from_rust = [0u8; 8];
        rust_checksum.call(&mut input.clone(), &mut from_rust);
        assert_eq!(output[..8], from_rust, "C and Rust checksums agree");
        assert_eq!(
            table.call(1, &mut input.clone(), &mut output),
            FunctionStatus::Ok(len as u32)
        );
        assert_eq!(output[..len], input[..]);
    }
    // A C function's length is checked against the capacity too (empty_c writes nothing).
    let mut output = [0u8; 4];
    assert_eq!(
        table.call(2, &mut [0u8; 10], &mut output),
        FunctionStatus::OutputTooLarge(10)
    );
    // Data, not a function.
    assert!(matches!(
        lib.function("functions_c_version"),
        Err(FunctionError::UnknownFunction { .. })
    ));
}

#[test]
fn plain_rfaas_entry_of_rust_functions() {
    // How a foreign rFaaS host calls a macro-exported function: plain C ABI, output buffer as
    // large as the input buffer, no status word.
    let dir = cache();
    let cached = LibraryStore::open(dir.path())
        .unwrap()
        .store(rust_library())
        .unwrap();
    // SAFETY: the example library's initialisers are plain Rust runtime set-up.
    let lib = unsafe { libloading::Library::new(&cached.path) }.unwrap();
    // SAFETY: `echo` and `panic` are exported by `export_function!` with the `RawFunction` ABI.
    let (echo, panic) = unsafe {
        (
            *lib.get::<RawFunction>(b"echo\0").unwrap(),
            *lib.get::<RawFunction>(b"panic\0").unwrap(),
        )
    };
    let mut input = *b"plain entry";
    let mut output = [0u8; 11];
    // SAFETY: both buffers are valid for 11 bytes and disjoint.
    let len = unsafe { echo(input.as_mut_ptr().cast(), 11, output.as_mut_ptr().cast()) };
    assert_eq!(len, 11);
    assert_eq!(&output, b"plain entry");
    // SAFETY: as above.
    let len = unsafe { panic(input.as_mut_ptr().cast(), 11, output.as_mut_ptr().cast()) };
    assert_eq!(len, rfaas::function::abi::PLAIN_PANIC_SENTINEL);
}

#[test]
fn cache_reuses_by_hash_and_replaces_tampered_files() {
    let dir = cache();
    let store = LibraryStore::open(dir.path()).unwrap();
    let first = store.store(rust_library()).unwrap();
    assert_eq!(first.outcome, StoreOutcome::Written);
    assert_eq!(
        first.path.file_name().unwrap().to_str().unwrap(),
        format!("{}.so", ContentHash::of(rust_library()))
    );
    let meta = fs::metadata(&first.path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);

    // Loading the same bytes again reuses the file: same inode, not rewritten.
    let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
    assert_eq!(lib.path(), first.path);
    let again = fs::metadata(&first.path).unwrap();
    assert_eq!(
        (again.ino(), again.mtime_nsec()),
        (meta.ino(), meta.mtime_nsec())
    );
    assert_eq!(
        store.store(rust_library()).unwrap().outcome,
        StoreOutcome::Reused
    );

    // By hash alone (the client sends only the hash once the manager has the library).
    let by_hash = FunctionLibrary::open_cached(dir.path(), &first.hash).unwrap();
    let mut out = [0u8; 8];
    assert_eq!(
        by_hash
            .resolve(&["echo"])
            .unwrap()
            .call(0, &mut b"hash".to_vec(), &mut out),
        FunctionStatus::Ok(4)
    );

    // Tamper with the cached file: detected by hash, never loaded. (The file is swapped by a
    // rename: writing in place into a library this process has mapped would crash it with
    // SIGBUS, which is why the store itself only ever renames.)
    let tamper = |bytes: &[u8]| {
        let tmp = dir.path().join("tampered.tmp");
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, &first.path).unwrap();
    };
    tamper(c_library());
    assert!(matches!(
        FunctionLibrary::open_cached(dir.path(), &first.hash),
        Err(FunctionError::NotCached { .. })
    ));
    assert!(!first.path.exists(), "a corrupt cached file is removed");
    tamper(b"truncated");
    let repaired = store.store(rust_library()).unwrap();
    assert_eq!(repaired.outcome, StoreOutcome::Replaced);
    assert_eq!(fs::read(&repaired.path).unwrap(), rust_library());
    assert!(FunctionLibrary::open_cached(dir.path(), &first.hash).is_ok());
    // The library loaded before the file was replaced keeps working (a new inode, the old
    // mapping is untouched).
    let table = lib.resolve(&["checksum"]).unwrap();
    assert_eq!(
        table.call(0, &mut b"abc".to_vec(), &mut out),
        FunctionStatus::Ok(8)
    );
    assert_eq!(out, fnv1a(b"abc"));

    // A hash that was never stored.
    let unknown = ContentHash::of(b"never stored");
    assert!(matches!(
        FunctionLibrary::open_cached(dir.path(), &unknown),
        Err(FunctionError::NotCached { .. })
    ));
}

#[test]
fn library_cache_loads_each_library_once() {
    let dir = cache();
    let libs = LibraryCache::new(dir.path().join("libs")).unwrap();
    let a = libs.load(rust_library()).unwrap();
    let c = libs.load(c_library()).unwrap();
    assert_ne!(a.hash(), c.hash());
    assert_eq!(libs.get(&a.hash()).unwrap().path(), a.path());
    // Loaded once: a second load is served from memory without reading the disk again, so
    // even a damaged file does not matter to this process any more.
    let mtime = fs::metadata(a.path()).unwrap().mtime_nsec();
    let again = libs.load(rust_library()).unwrap();
    assert_eq!(again.path(), a.path());
    assert_eq!(fs::metadata(a.path()).unwrap().mtime_nsec(), mtime);
    let by_hash = libs.load_cached(&c.hash()).unwrap();
    let mut out = [0u8; 8];
    let table = by_hash.resolve(&["echo_c"]).unwrap();
    assert_eq!(
        table.call(0, &mut b"c!".to_vec(), &mut out),
        FunctionStatus::Ok(2)
    );
    // The manager's path: store only.
    assert_eq!(
        libs.store(rust_library()).unwrap().outcome,
        StoreOutcome::Reused
    );
}

#[test]
fn bytes_that_are_not_a_library_fail_to_load() {
    let dir = cache();
    match FunctionLibrary::load(b"\x7fELF but not really", dir.path()) {
        Err(FunctionError::Load { path, .. }) => {
            assert!(path.starts_with(dir.path().canonicalize().unwrap()))
        }
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn segfault_kills_the_calling_process_with_sigsegv() {
    // The child is this test binary running only this test with the variable set; it calls
    // `segfault` and must die of SIGSEGV (not SIGABRT, not a panic), as the executor tests expect.
    const CHILD: &str = "RFAAS_TEST_SEGFAULT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let dir = cache();
        let lib = FunctionLibrary::load(rust_library(), dir.path()).unwrap();
        let table = lib.resolve(&["segfault"]).unwrap();
        let status = table.call(0, &mut [], &mut [0u8; 8]);
        panic!("segfault returned {status:?}");
    }
    use std::os::unix::process::ExitStatusExt;
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "segfault_kills_the_calling_process_with_sigsegv",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "child: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
