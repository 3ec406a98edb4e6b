//! The cost of the C layer alone: on ONE hot worker, calls through `rfaas_invoke` (the C ABI,
//! as a C program makes them) and direct `Executor::invoke` calls on the very executor behind
//! the handle alternate call by call (order flipped every pair), so that the machine's noise
//! falls on both; prints the medians, p99 and the median of the paired differences, apart for
//! the pairs where the C call went first and where it went second (the first call of a pair is
//! the slower one), and their mean: the C layer's overhead per call.
//!
//!   cargo run --release -p rfaas-c --example ffi_overhead -- CLUSTER_JSON LIBRARY [PAIRS [SIZE]]
//!
//! `FFI_OVERHEAD_AA=1` makes both sides direct calls (calibration of the method).
//!
//! Shared-memory clusters only (the executor is downcast to `Executor<ShmFabric>`).

use std::ffi::CString;
use std::time::Instant;

use rfaas_c::client::*;
use rfaas_c::rfaas_last_error;
use rfaas_core::client::Executor;
use rfaas_core::rdma::shm::ShmFabric;

fn check(what: &str, rc: i32) {
    if rc != 0 {
        // SAFETY: rfaas_last_error returns a NUL-terminated string valid until the next call.
        let msg = unsafe { std::ffi::CStr::from_ptr(rfaas_last_error()) };
        eprintln!("ffi_overhead: {what}: code {rc}: {}", msg.to_string_lossy());
        std::process::exit(1);
    }
}

/// One call through the C ABI, timed.
fn c_call(exec: *const rfaas_executor, f: u32, input: &[u8], out: &mut [u8]) -> i64 {
    let mut n = 0usize;
    let t = Instant::now();
    // SAFETY: a live handle, buffers of the lengths given.
    let rc = unsafe {
        rfaas_invoke(
            exec,
            f,
            input.as_ptr().cast(),
            input.len(),
            out.as_mut_ptr().cast(),
            out.len(),
            &mut n,
        )
    };
    let ns = t.elapsed().as_nanos() as i64;
    check("rfaas_invoke", rc);
    ns
}

#[inline(never)]
fn r_call(
    e: &Executor<ShmFabric>,
    f: rfaas_core::client::FunctionId,
    input: &[u8],
    out: &mut [u8],
) -> i64 {
    let t = Instant::now();
    std::hint::black_box(e).invoke(f, input, out).unwrap();
    t.elapsed().as_nanos() as i64
}

fn pct(v: &mut [i64], q: f64) -> i64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: ffi_overhead CLUSTER_JSON LIBRARY [PAIRS [SIZE]]");
        std::process::exit(2);
    }
    let pairs: usize = args.get(3).map_or(20000, |s| s.parse().expect("PAIRS"));
    let size: usize = args.get(4).map_or(64, |s| s.parse().expect("SIZE"));
    if let Some(&c) = rfaas_core::pin::allowed_cores().last() {
        let _ = rfaas_core::pin::pin_current_thread(c);
    }
    let path = CString::new(args[1].as_str()).unwrap();
    let lib = CString::new(args[2].as_str()).unwrap();
    let name = CString::new("empty").unwrap();
    let mut cluster = std::ptr::null_mut();
    let mut exec = std::ptr::null_mut();
    let mut spec = std::mem::MaybeUninit::<rfaas_allocation_spec>::uninit();
    let mut f = 0u32;
    // SAFETY: valid pointers and NUL-terminated strings that outlive the calls.
    unsafe {
        check("open", rfaas_cluster_open(path.as_ptr(), &mut cluster));
        check("spec", rfaas_allocation_spec_init(spec.as_mut_ptr()));
        let mut spec = spec.assume_init();
        spec.library_path = lib.as_ptr();
        spec.functions = name.as_ptr();
        spec.input_capacity = size.max(1) as u32;
        spec.output_capacity = size.max(1) as u32;
        spec.hot_timeout_ms = -1;
        check("allocate", rfaas_allocate(cluster, &spec, &mut exec));
        check("function", rfaas_function(exec, name.as_ptr(), &mut f));
    }
    // SAFETY: `exec` is live until rfaas_deallocate below.
    let direct = unsafe { executor_of(exec) }
        .and_then(|a| a.downcast_ref::<Executor<ShmFabric>>())
        .expect("a shm cluster");
    let fid = direct.function("empty").unwrap();
    let input = vec![7u8; size];
    let mut out = vec![0u8; size.max(1)];
    let (mut c_ns, mut r_ns) = (Vec::new(), Vec::new());
    let (mut first, mut second) = (Vec::new(), Vec::new());
    // Calibration (A/A): FFI_OVERHEAD_AA=1 makes both sides direct calls; the paired
    // difference then shows what the method reports when there is no difference.
    let aa = std::env::var("FFI_OVERHEAD_AA").is_ok_and(|v| v == "1");
    if aa {
        println!("ffi_overhead: A/A calibration: both columns are direct calls");
    }
    for i in 0..pairs + 1000 {
        let (c, r) = if aa {
            let c = r_call(direct, fid, &input, &mut out);
            (c, r_call(direct, fid, &input, &mut out))
        } else if i % 2 == 0 {
            let c = c_call(exec, f, &input, &mut out);
            (c, r_call(direct, fid, &input, &mut out))
        } else {
            let r = r_call(direct, fid, &input, &mut out);
            (c_call(exec, f, &input, &mut out), r)
        };
        if i >= 1000 {
            c_ns.push(c);
            r_ns.push(r);
            // The first call of a pair is slower than the second (the worker has just
            // answered): keep the differences apart by which side went first.
            if aa || i % 2 == 0 {
                first.push(c - r);
            } else {
                second.push(c - r);
            }
        }
    }
    // The boundary alone: a call through the same guard, handle check and dyn dispatch.
    let mut w = 0u32;
    let t = Instant::now();
    for _ in 0..1_000_000 {
        // SAFETY: a live handle; the out-pointers are valid or NULL.
        let rc = unsafe {
            rfaas_executor_info(
                std::hint::black_box(exec),
                &mut w,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0);
    }
    let boundary = t.elapsed().as_nanos() as f64 / 1e6;
    println!("ffi_overhead: rfaas_executor_info (the boundary alone): {boundary:.1} ns per call");
    // SAFETY: the handles are live and not used afterwards.
    unsafe {
        check("deallocate", rfaas_deallocate(exec));
        rfaas_cluster_close(cluster);
    }
    let d1 = pct(&mut first, 0.5);
    let d2 = if second.is_empty() {
        d1
    } else {
        pct(&mut second, 0.5)
    };
    println!(
        "ffi_overhead: {size} B, {pairs} pairs on one hot worker: rfaas_invoke p50 {} ns p99 {} ns | \
         Executor::invoke p50 {} ns p99 {} ns | paired difference p50 {d1} ns (C first), {d2} ns \
         (C second): C-layer overhead {} ns",
        pct(&mut c_ns, 0.5),
        pct(&mut c_ns, 0.99),
        pct(&mut r_ns, 0.5),
        pct(&mut r_ns, 0.99),
        (d1 + d2) / 2
    );
}
