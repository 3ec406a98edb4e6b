//! A cluster seen from a client: the executor managers named by a `cluster.json`, with the
//! cluster secret, and one-shot invocation for the `rfaas invoke` command.

use std::path::Path;
use std::time::Duration;

use super::error::ClientError;
use super::executor::{AllocationSpec, ClientOptions, Executor};
use super::manager::ManagerClient;
use crate::cluster::ClusterFile;
use crate::rdma::{Fabric, FabricUser, Provider};

/// The executor managers of a cluster file, ready to be asked for allocations.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The provider the cluster's executors speak.
    pub provider: Provider,
    /// One client per executor manager, in file order.
    pub managers: Vec<ManagerClient>,
    /// Their names (as in the file).
    pub names: Vec<String>,
}

impl Cluster {
    /// Reads `path` (or `RFAAS_CLUSTER` when `None`) and the secret it names.
    pub fn open(path: Option<&Path>) -> Result<Cluster, ClientError> {
        let (_, file) =
            ClusterFile::from_args(path).map_err(|e| ClientError::Config(e.to_string()))?;
        let secret = file
            .secret()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        if file.executor_managers.is_empty() {
            return Err(ClientError::Config(
                "the cluster file names no executor manager".into(),
            ));
        }
        Ok(Cluster {
            provider: file.provider,
            managers: file
                .executor_managers
                .iter()
                .map(|m| ManagerClient::new(&m.http, &secret))
                .collect(),
            names: file
                .executor_managers
                .iter()
                .map(|m| m.name.clone())
                .collect(),
        })
    }

    /// Allocates on the first manager that has room (in file order, starting at `first`).
    pub fn allocate<F: Fabric>(
        &self,
        fabric: &F,
        spec: &AllocationSpec,
        opts: ClientOptions,
        first: usize,
    ) -> Result<Executor<F>, ClientError> {
        let n = self.managers.len();
        let mut last = None;
        for k in 0..n {
            let m = &self.managers[(first + k) % n];
            match Executor::allocate(fabric.clone(), m, spec, opts) {
                Ok(e) => return Ok(e),
                Err(
                    ClientError::Manager { status: 503, .. }
                    | ClientError::Manager { status: 409, .. },
                ) if k + 1 < n => continue,
                Err(e) => last = Some(e),
            }
            if last.is_some() {
                break;
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no executor manager has room".into())))
    }
}

/// One invocation from the command line: allocate one core, run `function` on `input`, release.
pub fn invoke_once(
    cluster: &Cluster,
    library: &Path,
    function: &str,
    input: &[u8],
    output_capacity: u32,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(library)
        .map_err(|e| ClientError::Config(format!("read library {}: {e}", library.display())))?;
    let mut spec = AllocationSpec::new(bytes, &[function]);
    spec.input_capacity = (input.len() as u32).max(1);
    spec.output_capacity = output_capacity.max(1);
    spec.slots = 1;
    spec.hot_timeout_ms = 0;
    let opts = ClientOptions {
        timeout,
        ..ClientOptions::default()
    };
    cluster.provider.run(Once {
        cluster,
        spec: &spec,
        opts,
        input,
    })?
}

struct Once<'a> {
    cluster: &'a Cluster,
    spec: &'a AllocationSpec,
    opts: ClientOptions,
    input: &'a [u8],
}

impl FabricUser for Once<'_> {
    type Output = Result<Vec<u8>, ClientError>;
    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let exec = self.cluster.allocate(&fabric, self.spec, self.opts, 0)?;
        let f = exec.function(&self.spec.functions[0])?;
        let mut out = vec![0u8; self.spec.output_capacity as usize];
        let n = exec
            .invoke(f, self.input, &mut out)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        out.truncate(n);
        exec.deallocate()?;
        Ok(out)
    }
}
