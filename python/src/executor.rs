//! `rfaas.Cluster`, `rfaas.Executor` and the pending invocations behind `rfaas.Future`: thin
//! wrappers of [`rfaas::client`], whatever the fabric provider.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString, PyType};

use rfaas::client::{
    AllocateAny, AllocationSpec, AnyExecutor, ClientError, ClientOptions, Cluster, FunctionId,
    InvokeError, Pending,
};

use crate::buffer::Buffer;
use crate::errors::{self, Kind};

thread_local! {
    /// Where a result lands before it becomes a new `bytes` (its length is known only then).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `call` with a scratch buffer of `len` bytes and turns the first `n` bytes it reports
/// into a new `bytes` object.
pub(crate) fn into_new_bytes<'py>(
    py: Python<'py>,
    len: usize,
    call: impl FnOnce(&mut [u8]) -> PyResult<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let r = call(&mut buf[..len]).map(|n| PyBytes::new(py, &buf[..n.min(len)]).into_any());
    SCRATCH.with(|s| *s.borrow_mut() = buf);
    r
}

/// Validates a timeout in seconds.
pub(crate) fn duration(what: &str, seconds: f64) -> PyResult<Duration> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(Kind::InvalidArgument.err(format!(
            "{what} must be a positive number of seconds, not {seconds}"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A cluster described by a `cluster.json`: where allocations come from.
#[pyclass(module = "rfaas._native", name = "Cluster", frozen)]
pub struct PyCluster {
    cluster: Cluster,
    path: Option<PathBuf>,
}

#[pymethods]
impl PyCluster {
    /// Opens the cluster file `path` (default: the `RFAAS_CLUSTER` environment variable) and the
    /// cluster secret it names. Raises `ConfigError` when either cannot be used.
    #[new]
    #[pyo3(signature = (path=None))]
    fn new(path: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let path: Option<PathBuf> = path
            .map(|p| {
                p.extract().map_err(|_| {
                    Kind::InvalidArgument.err("path: a str or os.PathLike naming cluster.json")
                })
            })
            .transpose()?;
        let cluster = Cluster::open(path.as_deref()).map_err(errors::client)?;
        Ok(PyCluster { cluster, path })
    }

    /// The fabric provider the cluster's executors speak (`"shm"`, `"tcp"` or `"verbs"`).
    #[getter]
    fn provider(&self) -> String {
        self.cluster.provider.to_string()
    }

    /// Allocates `cores` workers running the functions `functions` of `library` (a path to a
    /// shared object, or its bytes), leasing the cores first when the cluster has a resource
    /// manager, and connects to them. Returns an `Executor`; close it (or use `with`) to give
    /// the cores back.
    ///
    /// `input_capacity` / `output_capacity` bound one call's input and output in bytes, `slots`
    /// is the number of calls in flight per worker (1..256), `hot_timeout_ms` is -1 for
    /// always-busy-polling workers, 0 for workers that sleep between calls, or the
    /// milliseconds they stay hot after a call; `timeout` (seconds) bounds every call.
    /// `assets` (a dict of name to bytes-like) are handed once per executor to the library's
    /// init function; `InitFailedError` when it refuses.
    #[pyo3(signature = (library, functions, *, cores=1, input_capacity=4096,
                        output_capacity=4096, slots=4, hot_timeout_ms=100, timeout=10.0,
                        assets=None))]
    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &self,
        py: Python<'_>,
        library: &Bound<'_, PyAny>,
        functions: &Bound<'_, PyAny>,
        cores: u32,
        input_capacity: u32,
        output_capacity: u32,
        slots: u32,
        hot_timeout_ms: i64,
        timeout: f64,
        assets: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyExecutor> {
        let bytes = library_bytes(library)?;
        let functions: Vec<String> = if functions.is_instance_of::<PyString>() {
            Err(())
        } else {
            functions.extract().map_err(|_| ())
        }
        .map_err(|_| Kind::InvalidArgument.err("functions: a sequence of names (str)"))?;
        if functions.is_empty() {
            return Err(Kind::InvalidArgument.err("at least one function name"));
        }
        if cores == 0 {
            return Err(Kind::InvalidArgument.err("cores must be at least 1"));
        }
        if !(1..=256).contains(&slots) {
            return Err(Kind::InvalidArgument.err(format!("slots must be 1..256, not {slots}")));
        }
        let names: Vec<&str> = functions.iter().map(String::as_str).collect();
        let mut spec = AllocationSpec::new(bytes, &names);
        spec.cores = cores;
        spec.input_capacity = input_capacity;
        spec.output_capacity = output_capacity;
        spec.slots = slots;
        spec.hot_timeout_ms = hot_timeout_ms;
        if let Some(assets) = assets {
            add_assets(&mut spec, assets)?;
        }
        let opts = ClientOptions {
            timeout: duration("timeout", timeout)?,
            ..ClientOptions::default()
        };
        let cluster = &self.cluster;
        let exec = py
            .detach(|| {
                cluster
                    .provider
                    .run(AllocateAny {
                        cluster,
                        spec: &spec,
                        opts,
                    })
                    .map_err(ClientError::from)
                    .and_then(|r| r)
            })
            .map_err(errors::client)?;
        Ok(PyExecutor {
            inner: Arc::new(Shared {
                id: exec.allocation().id,
                exec: RwLock::new(Some(exec)),
                functions,
                cores: cores as usize,
                input_capacity: input_capacity as usize,
                output_capacity: output_capacity as usize,
                provider: cluster.provider.to_string(),
            }),
        })
    }

    fn __repr__(&self) -> String {
        match &self.path {
            Some(p) => format!("rfaas.Cluster({:?}, provider={})", p, self.cluster.provider),
            None => format!(
                "rfaas.Cluster($RFAAS_CLUSTER, provider={})",
                self.cluster.provider
            ),
        }
    }
}

/// Adds the assets of a `dict` of name (str) to bytes-like to `spec`, in the dict's order.
fn add_assets(spec: &mut AllocationSpec, assets: &Bound<'_, PyAny>) -> PyResult<()> {
    let wrong = || Kind::InvalidArgument.err("assets: a dict of name (str) to bytes-like");
    let dict = assets.cast::<PyDict>().map_err(|_| wrong())?;
    for (name, value) in dict.iter() {
        let name: String = name.extract().map_err(|_| wrong())?;
        let bytes = Buffer::read(&value).map_err(|e| {
            errors::buffer(assets.py(), &format!("assets[{name:?}]: bytes-like"), e)
        })?;
        spec.add_asset(name, bytes.as_slice().to_vec());
    }
    Ok(())
}

/// A library given as a path (str or os.PathLike) or as bytes.
fn library_bytes(library: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if library.is_instance_of::<PyString>() || library.hasattr("__fspath__")? {
        let path: PathBuf = library.extract()?;
        return std::fs::read(&path).map_err(|e| {
            Kind::Config.err(format!(
                "cannot read the function library {}: {e}",
                path.display()
            ))
        });
    }
    let b = Buffer::read(library)
        .map_err(|e| errors::buffer(library.py(), "library: a path or the library's bytes", e))?;
    Ok(b.as_slice().to_vec())
}

pub(crate) struct Shared {
    exec: RwLock<Option<Box<dyn AnyExecutor>>>,
    id: u64,
    functions: Vec<String>,
    cores: usize,
    input_capacity: usize,
    output_capacity: usize,
    provider: String,
}

impl Shared {
    /// The function's id: a name of the allocation, or its index.
    fn function(&self, f: &Bound<'_, PyAny>) -> PyResult<FunctionId> {
        if let Ok(s) = f.cast::<PyString>() {
            let name = s.to_cow()?;
            let name: &str = &name;
            return self
                .functions
                .iter()
                .position(|n| n == name)
                .map(|i| FunctionId(i as u16))
                .ok_or_else(|| {
                    Kind::UnknownFunction.err(format!(
                        "function {name:?} is not part of this allocation (it has {:?})",
                        self.functions
                    ))
                });
        }
        match f.extract::<usize>() {
            Ok(i) if i < self.functions.len() => Ok(FunctionId(i as u16)),
            Ok(i) => Err(Kind::UnknownFunction.err(format!(
                "function index {i} out of range: the allocation has {} functions",
                self.functions.len()
            ))),
            Err(_) => Err(Kind::InvalidArgument.err(format!(
                "function: a name (str) or an index (int), not {}",
                f.get_type().name()?
            ))),
        }
    }

    /// Runs `f` on the open executor, or raises `ClosedError`.
    fn with<T>(&self, f: impl FnOnce(&dyn AnyExecutor) -> PyResult<T>) -> PyResult<T> {
        let g = self.exec.read().unwrap_or_else(|p| p.into_inner());
        match g.as_deref() {
            Some(e) => f(e),
            None => Err(Kind::Closed.err("the executor is closed")),
        }
    }

    fn out_capacity(&self, given: Option<usize>) -> PyResult<usize> {
        match given {
            None => Ok(self.output_capacity),
            Some(n) if n <= self.output_capacity => Ok(n),
            Some(n) => Err(Kind::InvalidArgument.err(format!(
                "output_size {n} exceeds the allocation's output capacity of {} bytes",
                self.output_capacity
            ))),
        }
    }
}

/// Workers of one allocation, connected and ready to invoke. Thread-safe: threads that call at
/// once use different workers (calls on one worker take turns).
#[pyclass(module = "rfaas._native", name = "Executor", frozen)]
pub struct PyExecutor {
    inner: Arc<Shared>,
}

#[pymethods]
impl PyExecutor {
    /// Runs `function` (a name given at allocation, or its index) on `data` (bytes, bytearray,
    /// memoryview, a C-contiguous NumPy array: any bytes-like object, not copied except into
    /// the worker's memory) and waits for the result, with the GIL released.
    ///
    /// Without `out`, returns the result as new `bytes`. With `out` (a writable bytes-like
    /// object), writes the result into it and returns its length; `out`'s size (capped at the
    /// allocation's output capacity) is the most the function may return.
    #[pyo3(signature = (function, data, out=None))]
    fn invoke<'py>(
        &self,
        py: Python<'py>,
        function: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = &*self.inner;
        let f = s.function(function)?;
        let input = Buffer::read(data).map_err(|e| errors::buffer(py, "data", e))?;
        let input = input.as_slice();
        s.with(|ex| match out {
            Some(o) => {
                let mut ob = Buffer::write(o).map_err(|e| errors::buffer(py, "out", e))?;
                let slice = ob.as_mut_slice()?;
                let cap = slice.len().min(s.output_capacity);
                let slice = &mut slice[..cap];
                let n = py
                    .detach(|| ex.invoke(f, input, slice))
                    .map_err(errors::invoke)?;
                Ok(n.into_pyobject(py)?.into_any())
            }
            None => into_new_bytes(py, s.output_capacity, |buf| {
                py.detach(|| ex.invoke(f, input, buf))
                    .map_err(errors::invoke)
            }),
        })
    }

    /// Posts `function` on `data` and returns at once with an `rfaas.Future` (a
    /// `concurrent.futures.Future`); `data` is copied into the worker's memory before this
    /// returns, so it may be reused at once. The result goes into `out` (kept until the
    /// future completes; its result is then the length) or into new `bytes` of at most
    /// `output_size` bytes (default: the allocation's output capacity). `BusyError` when
    /// every slot of the chosen worker holds a call: collect some results first.
    #[pyo3(signature = (function, data, out=None, output_size=None))]
    fn submit<'py>(
        &self,
        py: Python<'py>,
        function: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyAny>>,
        output_size: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = &*self.inner;
        let f = s.function(function)?;
        let out_len = match &out {
            Some(o) => {
                let ob = Buffer::write(o).map_err(|e| errors::buffer(py, "out", e))?;
                ob.len().min(s.output_capacity)
            }
            None => s.out_capacity(output_size)?,
        };
        let input = Buffer::read(data).map_err(|e| errors::buffer(py, "data", e))?;
        let input = input.as_slice();
        let pending = s.with(|ex| {
            py.detach(|| ex.submit(None, f, input, out_len))
                .map_err(errors::invoke)
        })?;
        let call = PyPending {
            exec: self.inner.clone(),
            pending: Mutex::new(Some(pending)),
            out: out.map(Bound::unbind),
            out_len,
        };
        static FUTURE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        FUTURE.import(py, "rfaas.futures", "Future")?.call1((call,))
    }

    /// Disconnects from the workers and gives the cores (and the lease) back. Calls in flight
    /// on other threads finish first; later calls raise `ClosedError`. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let exec = py.detach(|| {
            self.inner
                .exec
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        });
        match exec {
            Some(e) => py.detach(|| e.deallocate()).map_err(errors::client),
            None => Ok(()),
        }
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .exec
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// The function names, in index order.
    #[getter]
    fn functions(&self) -> Vec<String> {
        self.inner.functions.clone()
    }

    /// Number of workers (cores).
    #[getter]
    fn workers(&self) -> usize {
        self.inner.cores
    }

    /// Largest input of one call, bytes.
    #[getter]
    fn input_capacity(&self) -> usize {
        self.inner.input_capacity
    }

    /// Largest output of one call, bytes.
    #[getter]
    fn output_capacity(&self) -> usize {
        self.inner.output_capacity
    }

    /// The allocation's id on its executor manager.
    #[getter]
    fn allocation(&self) -> u64 {
        self.inner.id
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "rfaas.Executor(allocation={}, provider={}, workers={}, functions={:?}{})",
            self.inner.id,
            self.inner.provider,
            self.inner.cores,
            self.inner.functions,
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// An invocation in flight, from `Executor.submit` (wrapped by `rfaas.Future`).
#[pyclass(module = "rfaas._native", name = "Pending", frozen)]
pub struct PyPending {
    exec: Arc<Shared>,
    pending: Mutex<Option<Pending>>,
    out: Option<Py<PyAny>>,
    out_len: usize,
}

impl PyPending {
    /// Collects the result with `get` (wait or poll) into `out` or new bytes.
    fn collect<'py>(
        &self,
        py: Python<'py>,
        get: impl Fn(
                &dyn AnyExecutor,
                &Mutex<Option<Pending>>,
                &mut [u8],
            ) -> Result<Option<usize>, InvokeError>
            + Send
            + Sync,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let pending = &self.pending;
        self.exec.with(|ex| match &self.out {
            Some(o) => {
                let o = o.bind(py);
                let mut ob = Buffer::write(o).map_err(|e| errors::buffer(py, "out", e))?;
                let slice = ob.as_mut_slice()?;
                let cap = slice.len().min(self.out_len);
                let slice = &mut slice[..cap];
                match py
                    .detach(|| get(ex, pending, slice))
                    .map_err(errors::invoke)?
                {
                    Some(n) => Ok(Some(n.into_pyobject(py)?.into_any())),
                    None => Ok(None),
                }
            }
            None => {
                let mut got = false;
                let b = into_new_bytes(py, self.out_len, |buf| {
                    let r = py
                        .detach(|| get(ex, pending, buf))
                        .map_err(errors::invoke)?;
                    got = r.is_some();
                    Ok(r.unwrap_or(0))
                })?;
                Ok(got.then_some(b))
            }
        })
    }
}

fn taken() -> InvokeError {
    InvokeError::Invalid("the result was already collected".into())
}

#[pymethods]
impl PyPending {
    /// Waits for the result (GIL released; bounded by the executor's timeout) and returns it:
    /// new `bytes`, or the length written into `out`.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let r = self.collect(py, |ex, p, buf| {
            let p = p
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(taken)?;
            ex.wait(p, buf).map(Some)
        })?;
        r.ok_or_else(|| Kind::Invocation.err("no result"))
    }

    /// The result if it has arrived, else `None` (does not block).
    fn poll<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.collect(py, |ex, p, buf| {
            let mut g = p.lock().unwrap_or_else(|e| e.into_inner());
            let r = ex.poll(g.as_ref().ok_or_else(taken)?, buf)?;
            if r.is_some() {
                g.take();
            }
            Ok(r)
        })
    }
}

impl Drop for PyPending {
    /// A result nobody collected still holds a slot of its worker: wait for it (GIL released)
    /// and drop it.
    fn drop(&mut self) {
        let Some(p) = self
            .pending
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut buf = vec![0u8; self.out_len];
        let g = self.exec.exec.read().unwrap_or_else(|e| e.into_inner());
        if let Some(ex) = g.as_deref() {
            // Bounded by the executor's call timeout; other Python threads run meanwhile.
            let _ = Python::attach(|py| py.detach(|| ex.wait(p, &mut buf)));
        }
    }
}
