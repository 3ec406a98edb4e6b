//! The client library: allocate workers on an executor manager, connect to them, and invoke
//! functions with one write each way.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use rfaas::client::{AllocationSpec, ClientOptions, Executor, ManagerClient};
//! use rfaas::rdma::shm::ShmFabric;
//!
//! let manager = ManagerClient::new("127.0.0.1:10000", "the cluster secret");
//! let library = std::fs::read("target/release/libfunctions.so")?;
//! let spec = AllocationSpec::new(library, &["echo"]);
//! let exec = Executor::allocate(ShmFabric::new()?, &manager, &spec, ClientOptions::default())?;
//! let echo = exec.function("echo")?;
//! let mut out = vec![0u8; 4096];
//! let n = exec.invoke(echo, b"hello", &mut out)?;
//! assert_eq!(&out[..n], b"hello");
//! exec.deallocate()?;
//! # Ok(()) }
//! ```

mod any_executor;
mod cluster;
mod credential;
mod error;
mod executor;
mod executor_manager;
mod http;
mod lease;

pub use any_executor::{AllocateAny, AnyExecutor};
pub use cluster::{invoke_once, Cluster};
pub use credential::Credential;
pub use error::{ClientError, InvokeError};
pub use executor::{
    AllocationSpec, AllocationTimings, Asset, ClientOptions, Executor, FunctionId, Pending,
};
pub use executor_manager::ManagerClient;
pub use lease::{Lease, LeaseOptions, RmClient};
