//! The MPI session from C and Fortran: `rfaas_session_init` over the caller's communicator,
//! offloads with no MPI call, `rfaas_session_finish` with the report.
//!
//! The application owns MPI: it calls `MPI_Init` (any thread level: the session makes MPI calls
//! only from the thread that calls init and finish) and `MPI_Finalize`; rfaas never initialises
//! or finalises it.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::time::Duration;

use mpi::ffi::MPI_Comm;
use mpi::raw::FromRaw;
use mpi::topology::SimpleCommunicator;
use rfaas_core::client::{ClientOptions, FunctionId};
use rfaas_core::mpi_glue::{Offload, Session, SessionConfig};

use crate::args::{
    answer, collect, function_names, give_handle, in_buf, need, opt_str_arg, put, str_arg,
};
use crate::error::{guard, rfaas_status, Error};

/// How a session is set up: the same on every rank. Fill it with `rfaas_session_config_init`
/// first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rfaas_session_config {
    /// cluster.json; NULL: `$RFAAS_CLUSTER`.
    pub cluster: *const c_char,
    /// Path of the function library (read by rank 0 only).
    pub library_path: *const c_char,
    /// Comma-separated function names ("black_scholes,echo").
    pub functions: *const c_char,
    /// Workers (cores) per rank. Default 1.
    pub cores_per_rank: u32,
    /// Largest input of one offload, bytes. Default 4096.
    pub input_capacity: u32,
    /// Largest output of one offload, bytes. Default 4096.
    pub output_capacity: u32,
    /// Offloads in flight per worker, 1..256. Default 4.
    pub slots: u32,
    /// -1 always hot, 0 always warm, N > 0 hot for N ms after each call. Default 100.
    pub hot_timeout_ms: i64,
    /// How long each offload waits for its result, ms (0: 10000).
    pub timeout_ms: u32,
}

/// What `rfaas_session_finish` reports; the totals are filled on rank 0 only (`is_root` 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct rfaas_session_report {
    /// 1 on rank 0 (the report below is filled), 0 elsewhere.
    pub is_root: c_int,
    /// Ranks in the session.
    pub ranks: c_int,
    /// Successful offloads of all ranks.
    pub invocations: u64,
    /// Failed offloads of all ranks.
    pub errors: u64,
    /// Ranks whose executor died.
    pub failed_ranks: c_int,
    /// Median offload latency over all ranks, ns.
    pub p50_ns: u64,
    /// 99th percentile offload latency over all ranks, ns.
    pub p99_ns: u64,
    /// Execution time billed by the executors, ns.
    pub execution_ns: u64,
    /// Hot-polling time billed by the executors, ns.
    pub hot_polling_ns: u64,
    /// The session's lease id.
    pub lease: u64,
}

/// A session on this rank (opaque). Used from the thread that created it only.
pub struct rfaas_session {
    inner: Option<Session>,
    thread: u64,
}

/// An offload in flight from `rfaas_offload_async` (opaque); `rfaas_wait` consumes it.
pub struct rfaas_offload_pending {
    inner: Offload,
}

thread_local! {
    static THREAD_ID: Cell<u64> = const { Cell::new(0) };
}

/// A small id of the calling thread (cheaper than `std::thread::current`).
fn thread_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    THREAD_ID.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        }
        t.get()
    })
}

/// Fills `cfg` with the defaults (no library, no functions, cluster from `$RFAAS_CLUSTER`).
///
/// # Safety
/// `cfg` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rfaas_session_config_init(cfg: *mut rfaas_session_config) -> c_int {
    guard(|| {
        let cfg = need(cfg, "cfg")?;
        let d = SessionConfig::new("", &[]);
        let v = rfaas_session_config {
            cluster: std::ptr::null(),
            library_path: std::ptr::null(),
            functions: std::ptr::null(),
            cores_per_rank: d.cores_per_rank,
            input_capacity: d.input_capacity,
            output_capacity: d.output_capacity,
            slots: d.slots,
            hot_timeout_ms: d.hot_timeout_ms,
            timeout_ms: d.options.timeout.as_millis() as u32,
        };
        // SAFETY: not NULL, writable by contract.
        unsafe { put(cfg, v) };
        Ok(())
    })
}

fn check_mpi() -> Result<(), Error> {
    if !mpi::environment::is_initialized() {
        return Err(Error::new(
            rfaas_status::Mpi,
            "MPI is not initialised: call MPI_Init before rfaas_session_init",
        ));
    }
    if mpi::environment::is_finalized() {
        return Err(Error::new(rfaas_status::Mpi, "MPI is already finalised"));
    }
    Ok(())
}

/// Whether `comm` is an inter-communicator, with MPI errors returned instead of aborting while
/// MPI looks at it (an invalid handle is reported on `MPI_COMM_WORLD`, whose handler is
/// restored afterwards).
fn test_inter(comm: MPI_Comm) -> Result<bool, Error> {
    let mut saved = std::mem::MaybeUninit::<mpi::ffi::MPI_Errhandler>::uninit();
    let mut inter: c_int = 0;
    // SAFETY: MPI is initialised (checked by the caller); `saved` is written by MPI, then put
    // back; `comm` is the caller's handle, which MPI validates (errors return, not abort).
    let rc = unsafe {
        let world = mpi::ffi::RSMPI_COMM_WORLD;
        mpi::ffi::MPI_Comm_get_errhandler(world, saved.as_mut_ptr());
        mpi::ffi::MPI_Comm_set_errhandler(world, mpi::ffi::RSMPI_ERRORS_RETURN);
        let rc = mpi::ffi::MPI_Comm_test_inter(comm, &mut inter);
        let mut saved = saved.assume_init();
        mpi::ffi::MPI_Comm_set_errhandler(world, saved);
        mpi::ffi::MPI_Errhandler_free(&mut saved);
        rc
    };
    if rc != 0 {
        return Err(Error::invalid(format!(
            "the communicator is not valid (MPI_Comm_test_inter returned error {rc})"
        )));
    }
    Ok(inter != 0)
}

/// A duplicate of the caller's intra-communicator, owned by rfaas.
fn own_duplicate(comm: MPI_Comm) -> Result<SimpleCommunicator, Error> {
    check_mpi()?;
    // SAFETY: an all-zero MPI_Comm is a plain value (a NULL pointer in Open MPI), only compared.
    let zero: MPI_Comm = unsafe { std::mem::zeroed() };
    // SAFETY: reading an MPI constant.
    if comm == unsafe { mpi::ffi::RSMPI_COMM_NULL } || comm == zero {
        return Err(Error::invalid(
            "the communicator is MPI_COMM_NULL (or a Fortran handle that names no communicator)",
        ));
    }
    let inter = test_inter(comm)?;
    if inter {
        return Err(Error::invalid(
            "the communicator is an inter-communicator; give an intra-communicator",
        ));
    }
    let mut dup = std::mem::MaybeUninit::<MPI_Comm>::uninit();
    // SAFETY: a valid intra-communicator (checked above); `dup` is written by MPI.
    let rc = unsafe { mpi::ffi::MPI_Comm_dup(comm, dup.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::new(
            rfaas_status::Mpi,
            format!("MPI_Comm_dup failed ({rc})"),
        ));
    }
    // SAFETY: MPI_Comm_dup succeeded and wrote a fresh intra-communicator (never WORLD, SELF
    // or NULL), which nothing else uses: the wrapper owns it and frees it on drop.
    Ok(unsafe { SimpleCommunicator::from_raw(dup.assume_init()) })
}

unsafe fn start(
    comm: MPI_Comm,
    cfg: *const rfaas_session_config,
    out: *mut *mut rfaas_session,
) -> Result<(), Error> {
    let out = need(out, "out")?;
    if cfg.is_null() {
        return Err(Error::null("cfg"));
    }
    // SAFETY: not NULL, a valid config by contract.
    let c = unsafe { *cfg };
    // SAFETY: the caller's contract on the config's strings.
    let (cluster, library, functions) = unsafe {
        (
            opt_str_arg(c.cluster, "cfg->cluster")?,
            str_arg(c.library_path, "cfg->library_path")?,
            function_names(str_arg(c.functions, "cfg->functions")?)?,
        )
    };
    if c.cores_per_rank == 0 {
        return Err(Error::invalid("cfg->cores_per_rank must be at least 1"));
    }
    let refs: Vec<&str> = functions.iter().map(String::as_str).collect();
    let mut s = SessionConfig::new(library, &refs);
    s.cluster = cluster.map(PathBuf::from);
    s.cores_per_rank = c.cores_per_rank;
    s.input_capacity = c.input_capacity;
    s.output_capacity = c.output_capacity;
    s.slots = c.slots;
    s.hot_timeout_ms = c.hot_timeout_ms;
    s.options = ClientOptions {
        timeout: if c.timeout_ms == 0 {
            ClientOptions::default().timeout
        } else {
            Duration::from_millis(c.timeout_ms.into())
        },
        ..ClientOptions::default()
    };
    // Our own duplicate: Session::start duplicates it again and keeps that one; ours is freed
    // right after (collectively, as MPI_Comm_free is).
    let comm = ManuallyDrop::new(own_duplicate(comm)?);
    let r = Session::start(&*comm, &s);
    ManuallyDrop::into_inner(comm);
    let session = r?;
    let handle = rfaas_session {
        inner: Some(session),
        thread: thread_id(),
    };
    // SAFETY: not NULL, writable by contract.
    unsafe { give_handle(out, handle) };
    Ok(())
}

/// Starts a session on every rank of `comm` (collective: every rank calls it): rank 0 leases
/// `ranks × cfg->cores_per_rank` cores and allocates, every rank connects to its own workers.
/// All ranks succeed or all fail with the same kind of error. MPI must be initialised by the
/// application (any thread level); the session is used from the calling thread only.
///
/// # Safety
/// `comm` a valid communicator (MPI_COMM_NULL and inter-communicators are refused; another
/// invalid handle is caught by MPI's error handler, if at all); `cfg` valid, with valid
/// strings; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn rfaas_session_init(
    comm: MPI_Comm,
    cfg: *const rfaas_session_config,
    out: *mut *mut rfaas_session,
) -> c_int {
    // SAFETY: the caller's contract, forwarded.
    guard(|| unsafe { start(comm, cfg, out) })
}

/// `rfaas_session_init` with a Fortran communicator handle (`MPI_Comm_f2c` is applied).
///
/// # Safety
/// As `rfaas_session_init`.
#[no_mangle]
pub unsafe extern "C" fn rfaas_session_init_f(
    fcomm: c_int,
    cfg: *const rfaas_session_config,
    out: *mut *mut rfaas_session,
) -> c_int {
    guard(|| {
        check_mpi()?;
        // SAFETY: MPI is initialised; f2c maps any integer (an unknown one to MPI_COMM_NULL).
        let comm = unsafe { mpi::ffi::RSMPI_Comm_f2c(fcomm) };
        // SAFETY: the caller's contract, forwarded.
        unsafe { start(comm, cfg, out) }
    })
}

/// The live session behind a handle, on the thread that created it.
///
/// # Safety
/// `s` NULL or a live handle from `rfaas_session_init`.
unsafe fn live<'a>(s: *const rfaas_session) -> Result<&'a Session, Error> {
    if s.is_null() {
        return Err(Error::null("session"));
    }
    // SAFETY: not NULL, a live handle by contract.
    let s = unsafe { &*s };
    if s.thread != thread_id() {
        return Err(Error::invalid(
            "the session is used from a thread other than the one that started it",
        ));
    }
    s.inner.as_ref().ok_or_else(|| {
        Error::new(
            rfaas_status::Finished,
            "the session was finished: no more offloads",
        )
    })
}

fn function(s: &Session, name: &str) -> Result<FunctionId, Error> {
    s.function(name).map_err(|_| {
        Error::new(
            rfaas_status::UnknownFunction,
            format!("function {name:?} is not part of this session"),
        )
    })
}

/// This rank and the number of ranks of the session (each out-pointer may be NULL).
///
/// # Safety
/// `session` a live handle; out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rfaas_session_rank(
    session: *const rfaas_session,
    rank: *mut c_int,
    size: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { live(session) }?;
        // SAFETY: NULL or writable.
        unsafe {
            put(rank, s.rank());
            put(size, s.size());
        }
        Ok(())
    })
}

/// Runs `function` on `input` on one of this rank's workers and waits for the result (copied
/// into `output`, room for `output_capacity` bytes; length in `*output_len`, which may be
/// NULL). No MPI call.
///
/// # Safety
/// `session` a live handle; `function` a NUL-terminated string; buffers as their lengths say.
#[no_mangle]
pub unsafe extern "C" fn rfaas_offload(
    session: *const rfaas_session,
    function_name: *const c_char,
    input: *const c_void,
    input_len: usize,
    output: *mut c_void,
    output_capacity: usize,
    output_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let (s, name, input) = (
                live(session)?,
                str_arg(function_name, "function")?,
                in_buf(input.cast(), input_len, "input")?,
            );
            answer(output, output_capacity, output_len, |out| {
                Ok(s.offload_id(function(s, name)?, input, out)?)
            })
        }
    })
}

/// Posts `function` on `input` from this rank and returns at once with `*offload` (result of
/// at most `output_capacity` bytes); collect it with `rfaas_wait`. No MPI call.
/// `RFAAS_STATUS_BUSY` when the chosen worker's slots are all in use.
///
/// # Safety
/// As `rfaas_offload`; `offload` writable. `input` may be reused as soon as this returns.
#[no_mangle]
pub unsafe extern "C" fn rfaas_offload_async(
    session: *const rfaas_session,
    function_name: *const c_char,
    input: *const c_void,
    input_len: usize,
    output_capacity: usize,
    offload: *mut *mut rfaas_offload_pending,
) -> c_int {
    guard(|| {
        let offload = need(offload, "offload")?;
        // SAFETY: the caller's contract on every pointer.
        let (s, name, input) = unsafe {
            (
                live(session)?,
                str_arg(function_name, "function")?,
                in_buf(input.cast(), input_len, "input")?,
            )
        };
        let o = s.offload_async(name, input, output_capacity).map_err(|e| {
            if s.function(name).is_err() {
                function(s, name).unwrap_err()
            } else {
                e.into()
            }
        })?;
        // SAFETY: not NULL, writable.
        unsafe { give_handle(offload, rfaas_offload_pending { inner: o }) };
        Ok(())
    })
}

/// Waits for an offload from `rfaas_offload_async` and copies its result into `output`;
/// consumes `offload` whatever the outcome. No MPI call.
///
/// # Safety
/// `session` the live handle that posted `offload`; `offload` not consumed yet; `output`
/// `output_capacity` writable bytes; `output_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rfaas_wait(
    session: *const rfaas_session,
    offload: *mut rfaas_offload_pending,
    output: *mut c_void,
    output_capacity: usize,
    output_len: *mut usize,
) -> c_int {
    let output = (output, output_capacity, output_len);
    guard(|| {
        // SAFETY: the caller's contract: `offload` from rfaas_offload_async, not consumed yet,
        // and the other pointers.
        unsafe {
            collect(
                offload,
                "offload",
                || live(session),
                output,
                |s, o, out| Ok(s.wait(o.inner, out)?),
            )
        }
    })
}

/// Ends the session on every rank (collective): gathers every rank's counts and latencies to
/// rank 0, which ends the allocations and releases the lease. `*report` (may be NULL) is filled
/// on rank 0. The handle stays allocated (later calls get `RFAAS_STATUS_FINISHED`) until
/// `rfaas_session_free`. Offloads still in flight are abandoned.
///
/// # Safety
/// `session` a live handle; `report` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rfaas_session_finish(
    session: *mut rfaas_session,
    report: *mut rfaas_session_report,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract (checks thread and state).
        unsafe { live(session) }?;
        // SAFETY: checked live just above; the only reference now.
        let s = unsafe { &mut *session };
        let inner = s.inner.take().expect("checked live");
        let size = inner.size();
        let r = inner.finish()?;
        let mut out = rfaas_session_report {
            ranks: size,
            ..Default::default()
        };
        if let Some(r) = r {
            out.is_root = 1;
            out.invocations = r.ranks.iter().map(|k| k.invocations).sum();
            out.errors = r.ranks.iter().map(|k| k.errors).sum();
            out.failed_ranks = r.failed_ranks().len() as c_int;
            out.p50_ns = r.total.quantile_ns(0.5);
            out.p99_ns = r.total.quantile_ns(0.99);
            out.execution_ns = r.ranks.iter().map(|k| k.execution_ns).sum();
            out.hot_polling_ns = r.ranks.iter().map(|k| k.hot_polling_ns).sum();
            out.lease = r.lease;
        }
        // SAFETY: NULL or writable.
        unsafe { put(report, out) };
        Ok(())
    })
}

/// Frees a session handle (NULL is ignored). A session not finished is ended without MPI
/// (rank 0 still ends the allocations and releases the lease).
///
/// # Safety
/// `session` NULL or from `rfaas_session_init`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn rfaas_session_free(session: *mut rfaas_session) {
    if !session.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: from Box::into_raw in rfaas_session_init, freed once by contract.
            drop(unsafe { Box::from_raw(session) })
        }));
    }
}
