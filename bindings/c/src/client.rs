//! The client calls: open a cluster, allocate (leasing first when the cluster has a resource
//! manager), look functions up, invoke, submit/poll/wait, deallocate.

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::time::Duration;

use rfaas_core::client::{AllocationSpec, ClientOptions, Cluster, FunctionId, Pending};

use crate::args::{
    answer, collect, function_names, give_handle, in_buf, need, opt_str_arg, out_buf, put, str_arg,
};
use crate::error::{guard, rfaas_status, Error};
use crate::executor::{AllocateAny, AnyExecutor};

/// A cluster file opened with `rfaas_cluster_open` (opaque).
pub struct rfaas_cluster {
    inner: Cluster,
}

/// An allocation: workers connected and ready to invoke (opaque).
pub struct rfaas_executor {
    inner: Box<dyn AnyExecutor>,
}

/// An invocation in flight from `rfaas_submit` (opaque); `rfaas_wait_pending`, or
/// `rfaas_poll_pending` once it reports done, consumes it.
pub struct rfaas_pending {
    inner: Pending,
}

/// What to allocate. Fill it with `rfaas_allocation_spec_init` first, then set the fields you
/// need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rfaas_allocation_spec {
    /// The function library as bytes (`library_len` of them), or NULL to read `library_path`.
    pub library: *const u8,
    /// Length of `library`.
    pub library_len: usize,
    /// Path of the function library (a shared object), used when `library` is NULL.
    pub library_path: *const c_char,
    /// Comma-separated function names ("echo,empty"); their order gives their indices.
    pub functions: *const c_char,
    /// Workers (cores) to allocate, at least 1. Default 1.
    pub cores: u32,
    /// Largest input of one call, bytes. Default 4096.
    pub input_capacity: u32,
    /// Largest output of one call, bytes. Default 4096.
    pub output_capacity: u32,
    /// Invocations in flight per worker, 1..256. Default 4.
    pub slots: u32,
    /// -1: workers always busy-poll (hot); 0: always warm (sleep between calls); N > 0: hot for
    /// N ms after each call. Default 100.
    pub hot_timeout_ms: i64,
    /// How long each call waits for its result, ms. Default 10000.
    pub timeout_ms: u32,
    /// Named assets for the library's init function (`rfaas_init`, see `rfaas_function.h`):
    /// `n_assets` entries, or NULL. Uploaded once per executor manager (cached there by content
    /// hash) and passed to `rfaas_init` once per executor, before the first invocation. Default
    /// NULL.
    pub assets: *const rfaas_allocation_asset,
    /// Number of entries at `assets`. Default 0.
    pub n_assets: usize,
}

/// One named asset of an allocation (`rfaas_allocation_spec::assets`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rfaas_allocation_asset {
    /// Its name: 1 to 128 bytes of ASCII letters, digits, '.', '_' and '-', not starting with a
    /// dot (NUL-terminated).
    pub name: *const c_char,
    /// Its bytes (`len` of them; may be NULL when `len` is 0). Copied during `rfaas_allocate`.
    pub data: *const u8,
    /// Their number.
    pub len: usize,
}

/// Fills `spec` with the defaults (no library, no functions).
///
/// # Safety
/// `spec` must be NULL or point to writable memory for one `rfaas_allocation_spec`.
#[no_mangle]
pub unsafe extern "C" fn rfaas_allocation_spec_init(spec: *mut rfaas_allocation_spec) -> c_int {
    guard(|| {
        let spec = need(spec, "spec")?;
        let d = AllocationSpec::new(Vec::new(), &["f"]);
        let v = rfaas_allocation_spec {
            library: std::ptr::null(),
            library_len: 0,
            library_path: std::ptr::null(),
            functions: std::ptr::null(),
            cores: d.cores,
            input_capacity: d.input_capacity,
            output_capacity: d.output_capacity,
            slots: d.slots,
            hot_timeout_ms: d.hot_timeout_ms,
            timeout_ms: ClientOptions::default().timeout.as_millis() as u32,
            assets: std::ptr::null(),
            n_assets: 0,
        };
        // SAFETY: not NULL, and writable by the caller's contract.
        unsafe { put(spec, v) };
        Ok(())
    })
}

/// Opens a cluster file (`path`, or `$RFAAS_CLUSTER` when `path` is NULL) and the secret it
/// names. Thread-safe. Close it with `rfaas_cluster_close`.
///
/// # Safety
/// `path` NULL or a NUL-terminated string; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rfaas_cluster_open(
    path: *const c_char,
    out: *mut *mut rfaas_cluster,
) -> c_int {
    guard(|| {
        let out = need(out, "out")?;
        // SAFETY: the caller's contract on `path`.
        let path = unsafe { opt_str_arg(path, "path") }?;
        let inner = Cluster::open(path.map(Path::new))?;
        // SAFETY: `out` is not NULL and valid for a write.
        unsafe { give_handle(out, rfaas_cluster { inner }) };
        Ok(())
    })
}

/// The fabric provider of the cluster's executors ("shm", "tcp", "verbs" or "ofi"); NULL for a NULL
/// cluster. Static string. Thread-safe.
///
/// # Safety
/// `cluster` NULL or from `rfaas_cluster_open`.
#[no_mangle]
pub unsafe extern "C" fn rfaas_cluster_provider(cluster: *const rfaas_cluster) -> *const c_char {
    if cluster.is_null() {
        return std::ptr::null();
    }
    // SAFETY: not NULL, a live handle by contract.
    match unsafe { &(*cluster).inner }.provider {
        rfaas_core::rdma::Provider::Shm => "shm\0",
        rfaas_core::rdma::Provider::Tcp => "tcp\0",
        rfaas_core::rdma::Provider::Verbs => "verbs\0",
        rfaas_core::rdma::Provider::Ofi => "ofi\0",
    }
    .as_ptr()
    .cast()
}

/// Closes a cluster (NULL is ignored). Allocations made from it stay valid.
///
/// # Safety
/// `cluster` NULL or from `rfaas_cluster_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn rfaas_cluster_close(cluster: *mut rfaas_cluster) {
    if !cluster.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: from Box::into_raw in rfaas_cluster_open, closed once by contract.
            drop(unsafe { Box::from_raw(cluster) })
        }));
    }
}

/// Allocates `spec->cores` workers (leasing them first when the cluster file names a resource
/// manager; the lease is released with the allocation), uploads the library and the assets
/// unless the manager has them cached, and connects to every worker. Blocking (milliseconds);
/// thread-safe. `RFAAS_STATUS_INIT_FAILED` when the library's init function refused to start
/// (`rfaas_last_error()` is its message).
///
/// # Safety
/// `cluster` from `rfaas_cluster_open`; `spec` a valid pointer whose buffers and strings are
/// valid; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rfaas_allocate(
    cluster: *const rfaas_cluster,
    spec: *const rfaas_allocation_spec,
    out: *mut *mut rfaas_executor,
) -> c_int {
    guard(|| {
        let out = need(out, "out")?;
        if cluster.is_null() {
            return Err(Error::null("cluster"));
        }
        if spec.is_null() {
            return Err(Error::null("spec"));
        }
        // SAFETY: not NULL, from rfaas_cluster_open by contract.
        let cluster = unsafe { &(*cluster).inner };
        // SAFETY: not NULL, a valid spec by contract.
        let s = unsafe { *spec };
        // SAFETY: the caller's contract on the spec's strings and buffers.
        let names = function_names(unsafe { str_arg(s.functions, "spec->functions") }?)?;
        let library = if s.library.is_null() {
            // SAFETY: as above.
            let path = unsafe { str_arg(s.library_path, "spec->library and spec->library_path") }?;
            std::fs::read(path).map_err(|e| {
                Error::new(rfaas_status::Cluster, format!("read library {path}: {e}"))
            })?
        } else {
            // SAFETY: as above.
            unsafe { in_buf(s.library, s.library_len, "spec->library") }?.to_vec()
        };
        if s.cores == 0 {
            return Err(Error::invalid("spec->cores must be at least 1"));
        }
        if !(1..=256).contains(&s.slots) {
            return Err(Error::invalid(format!(
                "spec->slots must be between 1 and 256, not {}",
                s.slots
            )));
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut a = AllocationSpec::new(library, &refs);
        a.cores = s.cores;
        a.input_capacity = s.input_capacity;
        a.output_capacity = s.output_capacity;
        a.slots = s.slots;
        a.hot_timeout_ms = s.hot_timeout_ms;
        // SAFETY: the caller's contract on the spec's assets.
        for (i, asset) in unsafe { assets(&s) }?.iter().enumerate() {
            // SAFETY: as above.
            let name = unsafe { str_arg(asset.name, &format!("spec->assets[{i}].name")) }?;
            let data = if asset.len == 0 {
                Vec::new()
            } else {
                // SAFETY: as above.
                unsafe { in_buf(asset.data, asset.len, &format!("spec->assets[{i}].data")) }?
                    .to_vec()
            };
            a.add_asset(name, data);
        }
        let opts = ClientOptions {
            timeout: timeout(s.timeout_ms),
            ..ClientOptions::default()
        };
        let exec = cluster
            .provider
            .run(AllocateAny {
                cluster,
                spec: &a,
                opts,
            })
            .map_err(|e| Error::new(rfaas_status::Cluster, e.to_string()))??;
        // SAFETY: `out` is not NULL and valid for a write.
        unsafe { give_handle(out, rfaas_executor { inner: exec }) };
        Ok(())
    })
}

/// The spec's assets as a slice.
///
/// # Safety
/// `s.assets` NULL or valid for `s.n_assets` entries.
unsafe fn assets(s: &rfaas_allocation_spec) -> Result<&[rfaas_allocation_asset], Error> {
    if s.n_assets == 0 {
        return Ok(&[]);
    }
    if s.assets.is_null() {
        return Err(Error::null("spec->assets (with spec->n_assets > 0)"));
    }
    // SAFETY: not NULL, valid for `n_assets` entries by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(s.assets, s.n_assets) })
}

fn timeout(ms: u32) -> Duration {
    if ms == 0 {
        ClientOptions::default().timeout
    } else {
        Duration::from_millis(ms.into())
    }
}

/// The executor behind a handle.
///
/// # Safety
/// `e` NULL or from `rfaas_allocate` and not deallocated.
unsafe fn exec<'a>(e: *const rfaas_executor) -> Result<&'a dyn AnyExecutor, Error> {
    if e.is_null() {
        return Err(Error::null("executor"));
    }
    // SAFETY: not NULL, a live handle by contract.
    Ok(unsafe { &*(*e).inner })
}

/// For benchmarks in Rust: the client library's executor behind a handle (the very one
/// `rfaas_invoke` calls), as `Any` to downcast to `rfaas::client::Executor<F>` of the cluster's
/// provider; `None` for a NULL handle. Not part of the C API.
///
/// # Safety
/// `e` NULL or a live handle from `rfaas_allocate`, which outlives the reference.
pub unsafe fn executor_of<'a>(e: *const rfaas_executor) -> Option<&'a dyn std::any::Any> {
    // SAFETY: the caller's contract.
    unsafe { exec(e) }.ok().map(|e| e.as_any())
}

/// The id of a function of the allocation by name (`RFAAS_STATUS_UNKNOWN_FUNCTION` when it was
/// not part of the allocation). Thread-safe.
///
/// # Safety
/// `executor` a live handle; `name` a NUL-terminated string; `id` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rfaas_function(
    executor: *const rfaas_executor,
    name: *const c_char,
    id: *mut u32,
) -> c_int {
    guard(|| {
        let id = need(id, "id")?;
        // SAFETY: the caller's contract.
        let e = unsafe { exec(executor) }?;
        // SAFETY: the caller's contract.
        let name = unsafe { str_arg(name, "name") }?;
        let f = e.function(name)?;
        // SAFETY: not NULL, valid for a write.
        unsafe { put(id, u32::from(f.0)) };
        Ok(())
    })
}

fn function_id(f: u32) -> Result<FunctionId, Error> {
    u16::try_from(f)
        .map(FunctionId)
        .map_err(|_| Error::new(rfaas_status::UnknownFunction, format!("no function {f}")))
}

/// Runs function `function` on `input` (`input_len` bytes) on a free worker, waits for the result
/// and copies it into `output`, which has room for `output_capacity` bytes (the most the
/// function may return; `RFAAS_STATUS_OUTPUT_TOO_SMALL` when it returns more). `*output_len`
/// (may be NULL) gets the result's length. Thread-safe: concurrent calls use different workers.
///
/// # Safety
/// `executor` a live handle; `input` `input_len` readable bytes; `output` `output_capacity`
/// writable bytes; `output_len` NULL or valid for a write. (C cannot check that a buffer really
/// is as long as the length given.)
#[no_mangle]
pub unsafe extern "C" fn rfaas_invoke(
    executor: *const rfaas_executor,
    function: u32,
    input: *const c_void,
    input_len: usize,
    output: *mut c_void,
    output_capacity: usize,
    output_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let (e, input) = (exec(executor)?, in_buf(input.cast(), input_len, "input")?);
            answer(output, output_capacity, output_len, |out| {
                Ok(e.invoke(function_id(function)?, input, out)?)
            })
        }
    })
}

/// Posts function `function` on `input` to worker `worker` (-1: round-robin) and returns at
/// once with `*pending`; the result (at most `output_capacity` bytes) is collected with
/// `rfaas_wait_pending` or `rfaas_poll_pending`. `RFAAS_STATUS_BUSY` when every slot of the
/// worker is in use.
/// Many calls may be in flight (slots × workers). Thread-safe.
///
/// # Safety
/// `executor` a live handle; `input` `input_len` readable bytes; `pending` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rfaas_submit(
    executor: *const rfaas_executor,
    function: u32,
    input: *const c_void,
    input_len: usize,
    output_capacity: usize,
    worker: i32,
    pending: *mut *mut rfaas_pending,
) -> c_int {
    guard(|| {
        let pending = need(pending, "pending")?;
        // SAFETY: the caller's contract.
        let (e, input) = unsafe { (exec(executor)?, in_buf(input.cast(), input_len, "input")?) };
        let worker = match worker {
            -1 => None,
            w if w >= 0 && (w as usize) < e.workers() => Some(w as usize),
            w => {
                return Err(Error::invalid(format!(
                    "worker {w}: the allocation has workers 0..{}",
                    e.workers()
                )))
            }
        };
        let p = e.submit(worker, function_id(function)?, input, output_capacity)?;
        // SAFETY: not NULL, valid for a write.
        unsafe { give_handle(pending, rfaas_pending { inner: p }) };
        Ok(())
    })
}

/// Waits for a submitted call (within the per-call timeout) and copies its result into
/// `output`; consumes `pending` whatever the outcome. Thread-safe.
///
/// # Safety
/// `executor` the live handle that submitted `pending`; `pending` from `rfaas_submit`, not
/// consumed yet; `output` `output_capacity` writable bytes; `output_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rfaas_wait_pending(
    executor: *const rfaas_executor,
    pending: *mut rfaas_pending,
    output: *mut c_void,
    output_capacity: usize,
    output_len: *mut usize,
) -> c_int {
    let output = (output, output_capacity, output_len);
    guard(|| {
        // SAFETY: the caller's contract: `pending` from rfaas_submit, not consumed yet, and the
        // other pointers.
        unsafe {
            collect(
                pending,
                "pending",
                || exec(executor),
                output,
                |e, p, out| Ok(e.wait(p.inner, out)?),
            )
        }
    })
}

/// Checks a submitted call without blocking: `*done` is 0 while it runs (`pending` stays
/// valid), 1 when it finished (result in `output`) or failed (the code says why); `pending` is
/// consumed when `*done` is 1. Thread-safe.
///
/// # Safety
/// As `rfaas_wait_pending`; `done` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rfaas_poll_pending(
    executor: *const rfaas_executor,
    pending: *mut rfaas_pending,
    output: *mut c_void,
    output_capacity: usize,
    output_len: *mut usize,
    done: *mut c_int,
) -> c_int {
    guard(|| {
        let done = need(done, "done")?;
        if pending.is_null() {
            return Err(Error::null("pending"));
        }
        // SAFETY: the caller's contract.
        let (e, output) = unsafe {
            (
                exec(executor)?,
                out_buf(output.cast(), output_capacity, "output")?,
            )
        };
        // SAFETY: a live pending handle by contract.
        let r = e.poll(unsafe { &(*pending).inner }, output);
        let finished = !matches!(r, Ok(None));
        // SAFETY: `done` is not NULL and writable.
        unsafe { put(done, c_int::from(finished)) };
        if finished {
            // SAFETY: from Box::into_raw in rfaas_submit; consumed here, once.
            drop(unsafe { Box::from_raw(pending) });
        }
        if let Some(n) = r? {
            // SAFETY: NULL or valid for a write.
            unsafe { put(output_len, n) };
        }
        Ok(())
    })
}

/// Workers, input and output capacity of an allocation (each out-pointer may be NULL).
///
/// # Safety
/// `executor` a live handle; out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rfaas_executor_info(
    executor: *const rfaas_executor,
    workers: *mut u32,
    input_capacity: *mut usize,
    output_capacity: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let e = unsafe { exec(executor) }?;
        // SAFETY: NULL or writable.
        unsafe {
            put(workers, e.workers() as u32);
            put(input_capacity, e.input_capacity());
            put(output_capacity, e.output_capacity());
        }
        Ok(())
    })
}

/// Disconnects, releases the allocation and its lease, and frees the handle (also when the
/// release fails; NULL is ignored). No call may be in flight on it or run concurrently.
///
/// # Safety
/// `executor` NULL or from `rfaas_allocate`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn rfaas_deallocate(executor: *mut rfaas_executor) -> c_int {
    guard(|| {
        if executor.is_null() {
            return Ok(());
        }
        // SAFETY: from Box::into_raw in rfaas_allocate, freed once by contract.
        let e = unsafe { Box::from_raw(executor) };
        e.inner.deallocate()?;
        Ok(())
    })
}
