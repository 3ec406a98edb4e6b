//! Function state loaded once, end to end with real processes on 127.0.0.1: an executor manager,
//! the executors it spawns (pooled and fresh), and this process as the client. The test library
//! `jobs/stateful` (Rust, `export_init!`) and `jobs/functions-c/stateful.c` (C, `rfaas_init`)
//! keep the assets their init function receives and count its calls.
//!
//! Checked: init runs exactly once per executor, whatever the number of invocations and workers;
//! a function sees every asset's exact bytes (compared with digests computed here with `sha2`);
//! an init error or panic reaches the client as `ClientError::InitFailed` with its message, the
//! cores come back and the manager serves the next allocation; bad names, too many and too large
//! assets are refused with a clear error; a library without init works with assets or without.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{functions_library, Manager, ManagerOptions, NO_HANG};
use rfaas::client::{AllocationSpec, ClientError, ClientOptions, Executor, ManagerClient};
use rfaas::control::executor_manager_api::{AllocationRequest, AssetRef};
use rfaas::rdma::shm::ShmFabric;
use sha2::{Digest, Sha256};

/// The Rust test library `jobs/stateful`, built into a target directory of this test's own.
fn stateful_library() -> &'static [u8] {
    static LIB: OnceLock<Vec<u8>> = OnceLock::new();
    LIB.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stateful-target");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "-p", "rfaas-stateful", "--lib"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .expect("run cargo to build jobs/stateful");
        assert!(
            out.status.success(),
            "cargo build -p rfaas-stateful failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(target.join("debug/libstateful.so")).unwrap()
    })
}

/// The C test library `jobs/functions-c/stateful.c`, built with `make` (a C compiler is part of
/// the build environment: scripts/setup.sh installs it).
fn stateful_c_library() -> Vec<u8> {
    common::functions_c_library("function-assets-c", "stateful_c")
}

fn manager(extra: &str) -> Manager {
    let d = ManagerOptions::default();
    Manager::start_with(ManagerOptions {
        extra: format!("{}{extra}", d.extra),
        ..d
    })
}

/// Pseudo-random bytes (xorshift), different for each seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn spec(lib: &[u8], functions: &[&str], cores: u32, output: u32) -> AllocationSpec {
    let mut s = AllocationSpec::new(lib.to_vec(), functions);
    s.cores = cores;
    s.input_capacity = 256;
    s.output_capacity = output;
    s.hot_timeout_ms = 0; // tests share 2 cores: warm workers
    s
}

fn u32_of(out: &[u8], n: usize) -> u32 {
    assert_eq!(n, 4, "a u32 is 4 bytes");
    u32::from_le_bytes(out[..4].try_into().unwrap())
}

fn allocate(m: &Manager, s: &AllocationSpec) -> Result<Executor<ShmFabric>, ClientError> {
    let client = ManagerClient::new(&m.http, &m.secret);
    Executor::allocate(
        ShmFabric::new().unwrap(),
        &client,
        s,
        ClientOptions::default(),
    )
}

fn wait_cores_back(m: &Manager) {
    common::wait_for(NO_HANG, "every core to be free again", || {
        let st = m.status();
        (st.cores_free == st.cores_total).then_some(())
    });
}

/// The assets of the happy-path tests: a 1 MiB "model", a text and an empty one.
fn assets() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("model.bin", noise(1 << 20, 7)),
        ("labels", b"cat\ndog\nnarwhal\n".to_vec()),
        ("empty", Vec::new()),
    ]
}

/// One allocation of `cores` workers on `m`: init ran once in its process, every worker sees
/// the same process and the assets' exact bytes, across many invocations. Returns its pid.
fn check_loaded_once(m: &Manager, cores: u32, expect_pooled: Option<bool>) -> u32 {
    let mut s = spec(
        stateful_library(),
        &["asset", "asset_names", "init_count", "pid"],
        cores,
        (1 << 20) + 64,
    );
    let assets = assets();
    for (name, bytes) in &assets {
        s.add_asset(*name, bytes.clone());
    }
    let exec = allocate(m, &s).expect("allocate with assets");
    if let Some(pooled) = expect_pooled {
        assert_eq!(exec.allocation().pooled, pooled, "pooled executor or fresh");
    }
    let (f_asset, f_names, f_count, f_pid) = (
        exec.function("asset").unwrap(),
        exec.function("asset_names").unwrap(),
        exec.function("init_count").unwrap(),
        exec.function("pid").unwrap(),
    );
    let mut out = vec![0u8; (1 << 20) + 64];
    let n = exec.invoke(f_pid, b"", &mut out).unwrap();
    let pid = u32_of(&out, n);
    assert_eq!(
        pid,
        exec.allocation().pid,
        "the executor the manager reported"
    );
    for round in 0..50 {
        for w in 0..exec.workers() {
            let n = exec.invoke_on(w, f_count, b"", &mut out).unwrap();
            assert_eq!(u32_of(&out, n), 1, "init calls, round {round}, worker {w}");
            let n = exec.invoke_on(w, f_pid, b"", &mut out).unwrap();
            assert_eq!(u32_of(&out, n), pid, "one process for every worker");
        }
    }
    for w in 0..exec.workers() {
        for (name, bytes) in &assets {
            let n = exec
                .invoke_on(w, f_asset, name.as_bytes(), &mut out)
                .unwrap_or_else(|e| panic!("asset {name} on worker {w}: {e}"));
            assert_eq!(n, bytes.len(), "length of {name}");
            assert_eq!(sha256(&out[..n]), sha256(bytes), "digest of {name}");
        }
        let n = exec.invoke_on(w, f_names, b"", &mut out).unwrap();
        assert_eq!(
            &out[..n],
            b"model.bin\nlabels\nempty",
            "names, in order added"
        );
    }
    // An asset the allocation did not ship: the function's error status.
    assert!(exec.invoke(f_asset, b"absent", &mut out).is_err());
    exec.deallocate().unwrap();
    pid
}

/// With the pool (the allocation gets a pre-started process, which receives library and assets
/// with its configuration) and without (a fresh process), on 2 workers when there are 2 cores.
#[test]
fn init_runs_once_per_executor_with_the_exact_bytes() {
    let cores = common::cores().len().min(2) as u32;
    let m = manager("pool_size = 1\n");
    common::wait_for(NO_HANG, "a pooled executor", || {
        (!m.status().pool.ready.is_empty()).then_some(())
    });
    let first = check_loaded_once(&m, cores, Some(true));
    // A second allocation with the same (now cached) assets: its own process, its own init.
    let second = check_loaded_once(&m, cores, None);
    assert_ne!(first, second, "each allocation has its executor");
    wait_cores_back(&m);
    drop(m);

    let fresh = manager("pool_size = 0\n");
    check_loaded_once(&fresh, cores, Some(false));
    wait_cores_back(&fresh);
}

/// An init function's error and panic fail the allocation with their message, as
/// `ClientError::InitFailed`; the cores come back and the manager serves the next allocation.
#[test]
fn init_errors_reach_the_client_and_the_manager_goes_on() {
    let m = manager("");
    let functions = ["init_count"];
    let s = spec(stateful_library(), &functions, 1, 64)
        .with_asset("labels", b"cat".to_vec())
        .with_asset("fail", b"model version 3 is not supported".to_vec());
    let err = allocate(&m, &s)
        .err()
        .expect("init must fail the allocation");
    match &err {
        ClientError::InitFailed { message, .. } => assert_eq!(
            message,
            "asset 'fail' says: model version 3 is not supported"
        ),
        other => panic!("expected InitFailed, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "function library init failed: asset 'fail' says: model version 3 is not supported"
    );
    wait_cores_back(&m);

    let s = spec(stateful_library(), &functions, 1, 64).with_asset("panic", b"boom".to_vec());
    let err = allocate(&m, &s).err().expect("a panicking init must fail");
    assert!(
        matches!(&err, ClientError::InitFailed { message, .. }
            if message.contains("panicked") && message.contains("asset 'panic' says: boom")),
        "{err:?}"
    );
    wait_cores_back(&m);

    // The manager goes on: the same library without the failing asset starts.
    let s = spec(stateful_library(), &functions, 1, 64).with_asset("labels", b"cat".to_vec());
    let exec = allocate(&m, &s).expect("the next allocation");
    let mut out = [0u8; 8];
    let n = exec
        .invoke(exec.function("init_count").unwrap(), b"", &mut out)
        .unwrap();
    assert_eq!(u32_of(&out, n), 1);
    exec.deallocate().unwrap();
    wait_cores_back(&m);
    // No executor left behind but the pool's.
    let st = m.status();
    let live: Vec<_> = st
        .allocations
        .iter()
        .filter(|a| matches!(a.state.as_str(), "starting" | "running" | "stopping"))
        .collect();
    assert!(live.is_empty(), "{live:?}");
}

/// An allocation request with `assets` for `library` (sent as is, bypassing the client checks).
fn raw_request(library: &str, assets: Vec<AssetRef>) -> AllocationRequest {
    AllocationRequest {
        library: library.to_string(),
        functions: vec!["init_count".into()],
        cores: 1,
        input_capacity: 64,
        output_capacity: 64,
        slots: 1,
        hot_timeout_ms: 0,
        lease: None,
        client: "function_assets test".into(),
        early_answer: false,
        assets,
    }
}

fn asset_ref(name: &str, bytes: &[u8]) -> AssetRef {
    AssetRef {
        name: name.into(),
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

fn refused(r: Result<rfaas::control::executor_manager_api::Allocation, ClientError>) -> String {
    match r {
        Err(ClientError::Manager {
            status, message, ..
        }) => format!("{status} {message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Bad names, too many assets, too many bytes, one asset over the upload limit, an asset never
/// uploaded, a wrong size and a name given twice: each refused with an error that says so; the
/// manager then serves a good allocation.
#[test]
fn bad_assets_are_refused_with_a_clear_error() {
    let lib = stateful_library();
    let upload_limit = lib.len() + 1000;
    let m = manager(&format!(
        "max_assets = 3\nmax_assets_bytes = 2000\nmax_library_bytes = {upload_limit}\n"
    ));
    let client = ManagerClient::new(&m.http, &m.secret);

    // The client refuses a bad name before sending anything.
    for bad in ["", ".hidden", "../etc/passwd", "a b", &"n".repeat(129)] {
        let s = spec(lib, &["init_count"], 1, 64).with_asset(bad, b"x".to_vec());
        let err = allocate(&m, &s).err().expect("a bad name must be refused");
        assert!(
            matches!(&err, ClientError::Invalid(msg) if msg.contains("invalid asset name")),
            "{bad:?}: {err:?}"
        );
    }
    // The manager refuses it too (a client that skips the check).
    let hash = client.upload_library(lib).unwrap().to_hex();
    let msg = refused(client.allocate(&raw_request(&hash, vec![asset_ref("a/b", b"x")])));
    assert!(
        msg.starts_with("400 ") && msg.contains("invalid asset name"),
        "{msg}"
    );

    // Too many.
    let mut s = spec(lib, &["init_count"], 1, 64);
    for i in 0..4 {
        s.add_asset(format!("a{i}"), vec![i as u8; 10]);
    }
    let err = allocate(&m, &s).err().expect("4 assets over a limit of 3");
    assert!(
        matches!(&err, ClientError::Manager { status: 400, message, .. }
            if message.contains("4 assets are too many") && message.contains("max_assets")),
        "{err:?}"
    );
    // Too many bytes together (each one fine).
    let s = spec(lib, &["init_count"], 1, 64)
        .with_asset("a", vec![1; 1500])
        .with_asset("b", vec![2; 1500]);
    let err = allocate(&m, &s)
        .err()
        .expect("3000 bytes over a limit of 2000");
    assert!(
        matches!(&err, ClientError::Manager { status: 400, message, .. }
            if message.contains("3000 bytes") && message.contains("max_assets_bytes")),
        "{err:?}"
    );
    // One asset over the upload limit: the allocation request, sent before any upload, names
    // its size, so the manager refuses it before a byte of it is sent; a raw request naming it
    // gets the same answer.
    let big = vec![3u8; upload_limit + 1];
    let s = spec(lib, &["init_count"], 1, 64).with_asset("big", big.clone());
    let err = allocate(&m, &s)
        .err()
        .expect("an asset over the upload limit");
    assert!(
        matches!(&err, ClientError::Manager { status: 400, message, .. }
            if message.contains(&format!("{} bytes", upload_limit + 1))
                && message.contains("max_library_bytes")),
        "{err:?}"
    );
    let msg = refused(client.allocate(&raw_request(&hash, vec![asset_ref("big", &big)])));
    assert!(
        msg.starts_with("400 ") && msg.contains("max_library_bytes"),
        "{msg}"
    );

    // Never uploaded: 404 naming the asset; a wrong size; a name given twice.
    let msg = refused(client.allocate(&raw_request(&hash, vec![asset_ref("ghost", b"boo")])));
    assert!(
        msg.starts_with("404 ") && msg.contains("\"ghost\"") && msg.contains("/v1/assets/"),
        "{msg}"
    );
    let h = client
        .upload_asset_leased(b"four", rfaas::function::ContentHash::of(b"four"), None)
        .unwrap();
    let mut wrong = asset_ref("four", b"four");
    wrong.size = 5;
    let msg = refused(client.allocate(&raw_request(&hash, vec![wrong])));
    assert!(
        msg.starts_with("400 ") && msg.contains("has 4 bytes, not 5"),
        "{msg}"
    );
    assert_eq!(h.to_hex(), asset_ref("four", b"four").sha256);
    let twice = vec![asset_ref("four", b"four"), asset_ref("four", b"four")];
    let msg = refused(client.allocate(&raw_request(&hash, twice)));
    assert!(
        msg.starts_with("400 ") && msg.contains("named twice"),
        "{msg}"
    );

    // Assets are any bytes (no ELF check), unlike libraries.
    let text = b"not an ELF file at all";
    let th = hex::encode(Sha256::digest(text));
    let (code, body) = m.call("PUT", &format!("/v1/assets/{th}"), Some(text));
    assert_eq!(code, 201, "{body}");
    let (code, _) = m.call("HEAD", &format!("/v1/assets/{th}"), None);
    assert_eq!(code, 200);
    let (code, body) = m.call("PUT", &format!("/v1/libraries/{th}"), Some(text));
    assert_eq!(code, 400, "{body}");
    // A hash that does not match the bytes.
    let (code, body) = m.call("PUT", &format!("/v1/assets/{}", "0".repeat(64)), Some(text));
    assert!(code == 400 && body.contains("SHA-256"), "{code} {body}");

    wait_cores_back(&m);
    let s = spec(lib, &["init_count"], 1, 64).with_asset("ok", vec![9; 100]);
    let exec = allocate(&m, &s).expect("a good allocation after the refusals");
    exec.deallocate().unwrap();
}

/// A library without an init function works as before, with assets (ignored) or without.
#[test]
fn a_library_without_init_works_as_before() {
    let m = manager("");
    let input = noise(100, 3);
    for with_assets in [false, true] {
        let mut s = spec(functions_library(), &["echo"], 1, 256);
        if with_assets {
            s.add_asset("unused", noise(5000, 4));
        }
        let exec = allocate(&m, &s).expect("allocate the library without init");
        let mut out = [0u8; 256];
        let n = exec
            .invoke(exec.function("echo").unwrap(), &input, &mut out)
            .unwrap();
        assert_eq!(&out[..n], &input[..]);
        exec.deallocate().unwrap();
    }
    // `rfaas_init` is not a function a client may call.
    let lib = stateful_library();
    let err = allocate(&m, &spec(lib, &["rfaas_init"], 1, 64))
        .err()
        .expect("rfaas_init is not invocable");
    assert!(err.to_string().contains("rfaas-internal"), "{err}");
    wait_cores_back(&m);
}

/// The C library's `rfaas_init` keeps a pointer to the mapped "table" asset; `lookup_c` maps
/// bytes through it. Its failure messages reach the client.
#[test]
fn the_c_library_init() {
    let lib = stateful_c_library();
    let m = manager("");
    let table: Vec<u8> = (0..=255u8)
        .map(|b| b.wrapping_mul(7).wrapping_add(11))
        .collect();
    let input = noise(200, 5);
    let expected: Vec<u8> = input
        .iter()
        .map(|&b| ((b as u32 * 7 + 11) % 256) as u8)
        .collect();
    let s = spec(&lib, &["lookup_c", "init_count_c"], 1, 256).with_asset("table", table);
    let exec = allocate(&m, &s).expect("allocate the C library");
    let mut out = [0u8; 256];
    for _ in 0..20 {
        let n = exec
            .invoke(exec.function("lookup_c").unwrap(), &input, &mut out)
            .unwrap();
        assert_eq!(&out[..n], &expected[..]);
    }
    let n = exec
        .invoke(exec.function("init_count_c").unwrap(), b"", &mut out)
        .unwrap();
    assert_eq!(u32_of(&out, n), 1);
    exec.deallocate().unwrap();

    for (s, message) in [
        (
            spec(&lib, &["lookup_c"], 1, 256),
            "no asset named 'table' among 0",
        ),
        (
            spec(&lib, &["lookup_c"], 1, 256).with_asset("table", vec![0; 10]),
            "asset 'table' has 10 bytes, not 256",
        ),
        (
            spec(&lib, &["lookup_c"], 1, 256)
                .with_asset("table", vec![0; 256])
                .with_asset("fail", b"C says no".to_vec()),
            "asset 'fail' says: C says no",
        ),
    ] {
        let err = allocate(&m, &s).err().expect("the C init must fail");
        assert_eq!(
            err.to_string(),
            format!("function library init failed: {message}")
        );
    }
    wait_cores_back(&m);
}

/// With a resource manager, asset uploads need a live lease like library uploads (403 without
/// one); through `Cluster::allocate`, which leases first, the assets reach the init function.
#[test]
fn asset_uploads_need_a_lease_with_a_resource_manager() {
    let rm = common::ResourceManager::start("");
    let em = common::manager_for_rm(&rm, "n0", &[common::cores()[0]], "");
    common::wait_for(NO_HANG, "the node to register", || {
        (rm.metrics()["nodes_alive"] == 1).then_some(())
    });
    let file = common::write_cluster_file(&rm, std::slice::from_ref(&em), "em-");

    let bytes = noise(3000, 11);
    let hash = hex::encode(Sha256::digest(&bytes));
    let (code, body) = em.call("PUT", &format!("/v1/assets/{hash}"), Some(&bytes));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("lease"), "{body}");

    let cluster = rfaas::client::Cluster::open(Some(&file)).unwrap();
    let s = spec(stateful_library(), &["asset", "init_count"], 1, 4096)
        .with_asset("table", bytes.clone());
    let fabric = ShmFabric::new().unwrap();
    let exec = cluster
        .allocate(&fabric, &s, ClientOptions::default(), 0)
        .expect("allocate under a lease");
    let mut out = vec![0u8; 4096];
    let n = exec
        .invoke(exec.function("asset").unwrap(), b"table", &mut out)
        .unwrap();
    assert_eq!(sha256(&out[..n]), sha256(&bytes));
    drop(exec);
    // Now cached on the node: HEAD says so.
    let (code, _) = em.call("HEAD", &format!("/v1/assets/{hash}"), None);
    assert_eq!(code, 200);
}
