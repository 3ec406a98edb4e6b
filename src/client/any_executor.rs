//! [`AnyExecutor`]: an allocation's [`Executor`] with its fabric provider erased, for code that
//! picks the provider at run time and keeps the executor behind one type (the C and Python
//! bindings, the MPI session); [`AllocateAny`] allocates one over a cluster's provider.

use super::{
    AllocationSpec, ClientError, ClientOptions, Cluster, Executor, FunctionId, InvokeError, Pending,
};
use crate::control::executor_manager_api::Allocation;
use crate::rdma::{Fabric, FabricUser};

/// The calls on one allocation, whatever its provider: each is [`Executor`]'s method of the
/// same name.
pub trait AnyExecutor: Send + Sync {
    /// [`Executor::function`]: the id of a function by name.
    fn function(&self, name: &str) -> Result<FunctionId, ClientError>;
    /// [`Executor::invoke`]: blocking invocation on a free worker.
    fn invoke(&self, f: FunctionId, input: &[u8], out: &mut [u8]) -> Result<usize, InvokeError>;
    /// [`Executor::invoke_on`]: blocking invocation on worker `worker`.
    fn invoke_on(
        &self,
        worker: usize,
        f: FunctionId,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, InvokeError>;
    /// [`Executor::submit`]: posts an invocation (on `worker`, or round-robin).
    fn submit(
        &self,
        worker: Option<usize>,
        f: FunctionId,
        input: &[u8],
        out_len: usize,
    ) -> Result<Pending, InvokeError>;
    /// [`Executor::wait`]: waits for a posted invocation.
    fn wait(&self, p: Pending, out: &mut [u8]) -> Result<usize, InvokeError>;
    /// [`Executor::poll`]: the result of a posted invocation, if it arrived.
    fn poll(&self, p: &Pending, out: &mut [u8]) -> Result<Option<usize>, InvokeError>;
    /// [`Executor::allocation`]: what the executor manager granted.
    fn allocation(&self) -> &Allocation;
    /// [`Executor::workers`]: workers of the allocation.
    fn workers(&self) -> usize;
    /// [`Executor::input_capacity`]: largest input, bytes.
    fn input_capacity(&self) -> usize;
    /// [`Executor::output_capacity`]: largest output, bytes.
    fn output_capacity(&self) -> usize;
    /// [`Executor::deallocate`]: disconnects and releases the allocation (and its lease).
    fn deallocate(self: Box<Self>) -> Result<(), ClientError>;
    /// The `Executor<F>` itself, to downcast (for benchmarks that call it directly).
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<F: Fabric> AnyExecutor for Executor<F> {
    fn function(&self, name: &str) -> Result<FunctionId, ClientError> {
        Executor::function(self, name)
    }
    fn invoke(&self, f: FunctionId, input: &[u8], out: &mut [u8]) -> Result<usize, InvokeError> {
        Executor::invoke(self, f, input, out)
    }
    fn invoke_on(
        &self,
        worker: usize,
        f: FunctionId,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, InvokeError> {
        Executor::invoke_on(self, worker, f, input, out)
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
    fn allocation(&self) -> &Allocation {
        Executor::allocation(self)
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

/// Allocates on `cluster` over its provider (leasing first when it has a resource manager):
/// [`Cluster::allocate`] from the first manager on.
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
