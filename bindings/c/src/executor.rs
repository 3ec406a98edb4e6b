//! An allocation behind one type whatever the cluster's provider: the client library's
//! `Executor<F>` with its fabric erased, as the C handle `rfaas_executor` holds it.

use rfaas_core::client::{
    AllocationSpec, ClientError, ClientOptions, Cluster, Executor, FunctionId, InvokeError, Pending,
};
use rfaas_core::rdma::{Fabric, FabricUser};

/// The calls of the C API on one allocation.
pub trait AnyExecutor: Send + Sync {
    /// The id of a function by name.
    fn function(&self, name: &str) -> Result<FunctionId, ClientError>;
    /// Blocking invocation on a free worker.
    fn invoke(&self, f: FunctionId, input: &[u8], out: &mut [u8]) -> Result<usize, InvokeError>;
    /// Posts an invocation (on `worker`, or round-robin).
    fn submit(
        &self,
        worker: Option<usize>,
        f: FunctionId,
        input: &[u8],
        out_len: usize,
    ) -> Result<Pending, InvokeError>;
    /// Waits for a posted invocation.
    fn wait(&self, p: Pending, out: &mut [u8]) -> Result<usize, InvokeError>;
    /// The result of a posted invocation, if it arrived.
    fn poll(&self, p: &Pending, out: &mut [u8]) -> Result<Option<usize>, InvokeError>;
    /// Workers of the allocation.
    fn workers(&self) -> usize;
    /// Largest input, bytes.
    fn input_capacity(&self) -> usize;
    /// Largest output, bytes.
    fn output_capacity(&self) -> usize;
    /// Disconnects and releases the allocation (and its lease).
    fn deallocate(self: Box<Self>) -> Result<(), ClientError>;
    /// The client library's `Executor<F>` itself (for benchmarks that call it directly).
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<F: Fabric> AnyExecutor for Executor<F> {
    fn function(&self, name: &str) -> Result<FunctionId, ClientError> {
        Executor::function(self, name)
    }
    fn invoke(&self, f: FunctionId, input: &[u8], out: &mut [u8]) -> Result<usize, InvokeError> {
        Executor::invoke(self, f, input, out)
    }
    fn submit(
        &self,
        worker: Option<usize>,
        f: FunctionId,
        input: &[u8],
        out_len: usize,
    ) -> Result<Pending, InvokeError> {
        Executor::submit(self, worker, f, input, out_len)
    }
    fn wait(&self, p: Pending, out: &mut [u8]) -> Result<usize, InvokeError> {
        Executor::wait(self, p, out)
    }
    fn poll(&self, p: &Pending, out: &mut [u8]) -> Result<Option<usize>, InvokeError> {
        Executor::poll(self, p, out)
    }
    fn workers(&self) -> usize {
        Executor::workers(self)
    }
    fn input_capacity(&self) -> usize {
        Executor::input_capacity(self)
    }
    fn output_capacity(&self) -> usize {
        Executor::output_capacity(self)
    }
    fn deallocate(self: Box<Self>) -> Result<(), ClientError> {
        Executor::deallocate(*self)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Allocates on `cluster` over its provider (leasing first when it has a resource manager).
pub struct AllocateAny<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// What to allocate.
    pub spec: &'a AllocationSpec,
    /// Client options (per-call timeout).
    pub opts: ClientOptions,
}

impl FabricUser for AllocateAny<'_> {
    type Output = Result<Box<dyn AnyExecutor>, ClientError>;
    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let e = self.cluster.allocate(&fabric, self.spec, self.opts, 0)?;
        Ok(Box::new(e))
    }
}
