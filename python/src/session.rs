//! `rfaas.mpi.Session`: [`rfaas::mpi_glue::Session`] over an mpi4py communicator.

use std::path::PathBuf;

use mpi::ffi::MPI_Comm;
use mpi::raw::FromRaw;
use mpi::topology::SimpleCommunicator;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use rfaas::client::ClientOptions;
use rfaas::mpi_glue::{Offload, Session, SessionConfig, SessionError};

use crate::buffer::Buffer;
use crate::errors::{self, Kind};
use crate::executor::{duration, into_new_bytes};

/// A value that stays on the thread that made it, carried through `Python::detach` (which runs
/// its closure on the calling thread, so nothing crosses threads).
struct SameThread<T>(T);

// SAFETY: `SameThread` is only created right before `Python::detach` and unwrapped right after
// it returns; `detach` runs the closure synchronously on the calling thread, so the wrapped
// value (a session reference or a session) is never used by another thread.
unsafe impl<T> Send for SameThread<T> {}

impl<T> SameThread<T> {
    /// The value (a method, so that closures capture the whole wrapper, not its field).
    fn get(self) -> T {
        self.0
    }
}

fn session_err(e: SessionError) -> PyErr {
    match e {
        SessionError::Client(c) => errors::client(c),
        SessionError::Invoke(i) => errors::invoke(i),
        other => Kind::Session.err(other.to_string()),
    }
}

/// Duplicates the communicator `handle` (a C `MPI_Comm` as mpi4py gives it) into one rsmpi
/// owns: the application's communicator is never freed here.
fn own_dup(handle: usize) -> PyResult<SimpleCommunicator> {
    if !mpi::environment::is_initialized() || mpi::environment::is_finalized() {
        return Err(Kind::Session
            .err("MPI is not initialised (import mpi4py.MPI first) or already finalised"));
    }
    let raw = MPI_Comm(handle as *mut _);
    // SAFETY: reading an MPI constant (a `static` of rsmpi's C shim).
    let null = unsafe { mpi::ffi::RSMPI_COMM_NULL };
    if raw.0.is_null() || raw == null {
        return Err(Kind::Session.err("the communicator is MPI_COMM_NULL"));
    }
    let mut inter = 0;
    // SAFETY: `raw` is the handle of a live mpi4py communicator (checked by `rfaas.mpi`, which
    // passes only `mpi4py.MPI.Intracomm` handles); `inter` is a valid out pointer.
    let rc = unsafe { mpi::ffi::MPI_Comm_test_inter(raw, &mut inter) };
    if rc != 0 || inter != 0 {
        return Err(Kind::Session.err("the communicator is not a valid intra-communicator"));
    }
    let mut dup = null;
    // SAFETY: as above; `dup` is a valid out pointer.
    let rc = unsafe { mpi::ffi::MPI_Comm_dup(raw, &mut dup) };
    if rc != 0 || dup == null {
        return Err(Kind::Session.err(format!("MPI_Comm_dup failed ({rc})")));
    }
    // SAFETY: `dup` is a live intra-communicator that nothing else refers to (not WORLD,
    // SELF or NULL); the `SimpleCommunicator` frees it when dropped.
    Ok(unsafe { SimpleCommunicator::from_raw(dup) })
}

/// The ranks of an MPI job sharing one lease (collective set-up and finish, offloads without
/// MPI traffic). Used from the thread that created it.
#[pyclass(module = "rfaas._native", name = "MpiSession", unsendable)]
pub struct PySession {
    session: Option<Session>,
    functions: Vec<String>,
    output_capacity: usize,
}

impl PySession {
    fn get(&self) -> PyResult<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| Kind::Closed.err("the session is finished"))
    }

    fn function(&self, name: &str) -> PyResult<rfaas::client::FunctionId> {
        self.get()?.function(name).map_err(|_| {
            Kind::UnknownFunction.err(format!(
                "function {name:?} is not part of this session (it has {:?})",
                self.functions
            ))
        })
    }
}

#[pymethods]
impl PySession {
    /// Collective over the communicator whose C handle is `comm`: see `rfaas.mpi.Session`.
    #[new]
    #[pyo3(signature = (comm, library, functions, *, cluster=None, cores_per_rank=1,
                        input_capacity=4096, output_capacity=4096, slots=4,
                        hot_timeout_ms=100, timeout=10.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        comm: usize,
        library: PathBuf,
        functions: Vec<String>,
        cluster: Option<PathBuf>,
        cores_per_rank: u32,
        input_capacity: u32,
        output_capacity: u32,
        slots: u32,
        hot_timeout_ms: i64,
        timeout: f64,
    ) -> PyResult<Self> {
        let names: Vec<&str> = functions.iter().map(String::as_str).collect();
        let mut cfg = SessionConfig::new(library, &names);
        cfg.cluster = cluster;
        cfg.cores_per_rank = cores_per_rank;
        cfg.input_capacity = input_capacity;
        cfg.output_capacity = output_capacity;
        cfg.slots = slots;
        cfg.hot_timeout_ms = hot_timeout_ms;
        cfg.options = ClientOptions {
            timeout: duration("timeout", timeout)?,
            ..ClientOptions::default()
        };
        // Every rank must reach the collective set-up, so argument errors that differ between
        // ranks are left to it (it reports them on every rank).
        let comm = own_dup(comm)?;
        let wrapped = SameThread((&comm, &cfg));
        let started = py.detach(move || {
            let (comm, cfg) = wrapped.get();
            SameThread(Session::start(comm, cfg))
        });
        let session = started.0.map_err(session_err)?;
        Ok(PySession {
            session: Some(session),
            functions,
            output_capacity: output_capacity as usize,
        })
    }

    /// This rank.
    #[getter]
    fn rank(&self) -> PyResult<i32> {
        Ok(self.get()?.rank())
    }

    /// Ranks in the session.
    #[getter]
    fn size(&self) -> PyResult<i32> {
        Ok(self.get()?.size())
    }

    /// This rank's workers: dicts with node, address, allocation, worker, core.
    #[getter]
    fn workers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for w in self.get()?.workers() {
            let d = PyDict::new(py);
            d.set_item("node", w.node)?;
            d.set_item("address", w.address)?;
            d.set_item("allocation", w.allocation)?;
            d.set_item("worker", w.worker)?;
            d.set_item("core", w.core)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Runs `function` on `data` on one of this rank's workers (no MPI call) and waits with
    /// the GIL released: new `bytes`, or the length written into `out`.
    #[pyo3(signature = (function, data, out=None))]
    fn offload<'py>(
        &self,
        py: Python<'py>,
        function: &str,
        data: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f = self.function(function)?;
        let s = SameThread(self.get()?);
        let input = Buffer::read(data).map_err(|e| errors::buffer(py, "data", e))?;
        let input = input.as_slice();
        match out {
            Some(o) => {
                let mut ob = Buffer::write(o).map_err(|e| errors::buffer(py, "out", e))?;
                let slice = ob.as_mut_slice()?;
                let cap = slice.len().min(self.output_capacity);
                let slice = &mut slice[..cap];
                let n = py
                    .detach(move || s.get().offload_id(f, input, slice))
                    .map_err(errors::invoke)?;
                Ok(n.into_pyobject(py)?.into_any())
            }
            None => into_new_bytes(py, self.output_capacity, |buf| {
                py.detach(move || s.get().offload_id(f, input, buf))
                    .map_err(errors::invoke)
            }),
        }
    }

    /// Posts `function` on `data` and returns at once (`data` is copied before it returns);
    /// collect the result with `wait(offload)`. At most `output_size` bytes of result
    /// (default: the output capacity).
    #[pyo3(signature = (function, data, output_size=None))]
    fn offload_async(
        &self,
        py: Python<'_>,
        function: &str,
        data: &Bound<'_, PyAny>,
        output_size: Option<usize>,
    ) -> PyResult<PyOffload> {
        self.function(function)?;
        let s = self.get()?;
        let len = output_size.unwrap_or(self.output_capacity);
        if len > self.output_capacity {
            return Err(Kind::InvalidArgument.err(format!(
                "output_size {len} exceeds the session's output capacity of {} bytes",
                self.output_capacity
            )));
        }
        let input = Buffer::read(data).map_err(|e| errors::buffer(py, "data", e))?;
        let o = s
            .offload_async(function, input.as_slice(), len)
            .map_err(errors::invoke)?;
        Ok(PyOffload {
            offload: Some(o),
            len,
        })
    }

    /// Waits for an offload from `offload_async` (GIL released): its result as new `bytes`.
    fn wait<'py>(&self, py: Python<'py>, offload: &mut PyOffload) -> PyResult<Bound<'py, PyAny>> {
        let o = offload
            .offload
            .take()
            .ok_or_else(|| Kind::InvalidArgument.err("this offload was already collected"))?;
        let s = SameThread(self.get()?);
        let o = SameThread(o);
        into_new_bytes(py, offload.len, |buf| {
            py.detach(move || s.get().wait(o.get(), buf))
                .map_err(errors::invoke)
        })
    }

    /// Ends the session on every rank (collective): rank 0 gets a report (a dict: invocations,
    /// errors, p50_ns, p99_ns, lease, per-rank counts, failed ranks), the other ranks `None`.
    /// Later calls raise `ClosedError`.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let s = self
            .session
            .take()
            .ok_or_else(|| Kind::Closed.err("the session is already finished"))?;
        let wrapped = SameThread(s);
        let report = py
            .detach(move || SameThread(wrapped.get().finish()))
            .0
            .map_err(session_err)?;
        let Some(r) = report else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("invocations", r.total.count())?;
        d.set_item("errors", r.ranks.iter().map(|k| k.errors).sum::<u64>())?;
        d.set_item("p50_ns", r.total.quantile_ns(0.5))?;
        d.set_item("p99_ns", r.total.quantile_ns(0.99))?;
        d.set_item("lease", r.lease)?;
        d.set_item("failed_ranks", r.failed_ranks())?;
        let ranks = PyList::empty(py);
        for k in &r.ranks {
            let e = PyDict::new(py);
            e.set_item("rank", k.rank)?;
            e.set_item("workers", k.workers)?;
            e.set_item("invocations", k.invocations)?;
            e.set_item("errors", k.errors)?;
            e.set_item("failure", k.failure.clone())?;
            e.set_item("execution_ns", k.execution_ns)?;
            ranks.append(e)?;
        }
        d.set_item("ranks", ranks)?;
        Ok(Some(d))
    }

    /// Whether `finish()` was called.
    #[getter]
    fn finished(&self) -> bool {
        self.session.is_none()
    }

    /// Ends this rank's part without MPI (rank 0 releases the lease): for error paths and
    /// interpreter exit, where other ranks may not reach `finish()`.
    fn abandon(&mut self) {
        self.drop_session();
    }
}

impl PySession {
    fn drop_session(&mut self) {
        if let Some(s) = self.session.take() {
            if mpi::environment::is_finalized() {
                // Freeing its communicator now would be an MPI call after MPI_Finalize.
                std::mem::forget(s);
            } else {
                drop(s);
            }
        }
    }
}

impl Drop for PySession {
    fn drop(&mut self) {
        self.drop_session();
    }
}

/// An offload in flight, from `Session.offload_async`.
#[pyclass(module = "rfaas._native", name = "MpiOffload", unsendable)]
pub struct PyOffload {
    offload: Option<Offload>,
    len: usize,
}

#[pymethods]
impl PyOffload {
    /// Whether its result was collected.
    #[getter]
    fn collected(&self) -> bool {
        self.offload.is_none()
    }
}
