//! A cluster seen from a client: the resource manager and executor managers named by a
//! `cluster.json`, with the cluster secret, and one-shot invocation for the `rfaas invoke`
//! command. A file may name the resource manager alone (as `slurm/rfaas-cluster.sh` writes it):
//! leases then tell the client which executor managers to allocate on.

use std::path::Path;
use std::time::Duration;

use super::credential::Credential;
use super::error::ClientError;
use super::executor::{AllocationSpec, ClientOptions, Executor};
use super::executor_manager::ManagerClient;
use super::lease::{Lease, LeaseOptions, RmClient};
use crate::cluster::ClusterFile;
use crate::rdma::{Fabric, FabricUser, Provider};

/// The executor managers of a cluster file, ready to be asked for allocations.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The provider the cluster's executors speak.
    pub provider: Provider,
    /// One client per executor manager, in file order (empty when the file names only the
    /// resource manager: leases name the managers then).
    pub managers: Vec<ManagerClient>,
    /// Their names (as in the file).
    pub names: Vec<String>,
    /// The resource manager, when the cluster file names one: allocations then go through
    /// leases.
    pub resource_manager: Option<RmClient>,
    credential: Credential,
}

impl Cluster {
    /// Reads `path` (or `RFAAS_CLUSTER` when `None`) and the secret it names. The file must
    /// name a resource manager, or at least one executor manager.
    pub fn open(path: Option<&Path>) -> Result<Cluster, ClientError> {
        let (_, file) =
            ClusterFile::from_args(path).map_err(|e| ClientError::Config(e.to_string()))?;
        Self::from_file(&file)
    }

    /// The cluster described by an already loaded `file`, authenticating with MUNGE when the
    /// environment asks for it ([`Credential::munge_from_env`]), else with the cluster secret
    /// the file names (read here).
    pub fn from_file(file: &ClusterFile) -> Result<Cluster, ClientError> {
        let credential = match Credential::munge_from_env()? {
            Some(munge) => munge,
            None => Credential::Secret(
                file.secret()
                    .map_err(|e| ClientError::Config(e.to_string()))?,
            ),
        };
        Self::from_file_with(file, credential)
    }

    /// The cluster described by `file`, authenticating with `credential` (the file's secret
    /// is not read).
    pub fn from_file_with(
        file: &ClusterFile,
        credential: Credential,
    ) -> Result<Cluster, ClientError> {
        if file.executor_managers.is_empty() && file.resource_manager.is_none() {
            return Err(ClientError::Config(
                "the cluster file names neither a resource manager nor an executor manager".into(),
            ));
        }
        Ok(Cluster {
            provider: file.provider,
            managers: file
                .executor_managers
                .iter()
                .map(|m| ManagerClient::with_credential(&m.http, credential.clone()))
                .collect(),
            names: file
                .executor_managers
                .iter()
                .map(|m| m.name.clone())
                .collect(),
            resource_manager: file
                .resource_manager
                .as_deref()
                .map(|a| RmClient::with_credential(a, credential.clone())),
            credential,
        })
    }

    /// Leases `cores` cores from the resource manager (an error when the cluster file names
    /// none; the resource manager's "no capacity" message, status 503, when it is full).
    pub fn lease(&self, cores: u32, opts: &LeaseOptions) -> Result<Lease, ClientError> {
        let rm = self.resource_manager.as_ref().ok_or_else(|| {
            ClientError::Config("the cluster file names no resource manager".into())
        })?;
        Lease::acquire(rm, cores, opts)
    }

    /// The client of the executor manager at `address` (one of the file's, or a new one).
    pub fn manager_at(&self, address: &str) -> ManagerClient {
        let url = format!("http://{address}");
        self.managers
            .iter()
            .find(|m| m.url() == url || m.url() == address)
            .cloned()
            .unwrap_or_else(|| ManagerClient::with_credential(address, self.credential.clone()))
    }

    /// Allocates `spec.cores` workers under `lease`, on the first of its parts with that many
    /// cores (a split lease takes one allocation per part).
    pub fn allocate_leased<F: Fabric>(
        &self,
        fabric: &F,
        lease: &Lease,
        spec: &AllocationSpec,
        opts: ClientOptions,
    ) -> Result<Executor<F>, ClientError> {
        let part = lease
            .parts()
            .iter()
            .find(|p| p.cores >= spec.cores)
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "lease {} has no part with {} cores on one node",
                    lease.id(),
                    spec.cores
                ))
            })?;
        let mut spec = spec.clone();
        spec.lease = Some(lease.allocation_lease());
        Executor::allocate(fabric.clone(), &self.manager_at(&part.address), &spec, opts)
    }

    /// Allocates on the first manager that has room (in file order, starting at `first`).
    /// With a resource manager, it leases `spec.cores` cores first (renewed while the executor
    /// lives, released after it), and allocates where the lease is (`first` is not used).
    pub fn allocate<F: Fabric>(
        &self,
        fabric: &F,
        spec: &AllocationSpec,
        opts: ClientOptions,
        first: usize,
    ) -> Result<Executor<F>, ClientError> {
        if self.resource_manager.is_some() && spec.lease.is_none() {
            let t = std::time::Instant::now();
            let lease = self.lease(spec.cores, &LeaseOptions::default())?;
            let lease_ns = t.elapsed().as_nanos() as u64;
            let mut exec = self.allocate_leased(fabric, &lease, spec, opts)?;
            exec.count_lease_time(lease_ns);
            exec.hold_lease(lease);
            return Ok(exec);
        }
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
        let n = exec.invoke(f, self.input, &mut out)?;
        out.truncate(n);
        exec.deallocate()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ManagerEntry;

    fn file_in(dir: &Path, managers: Vec<ManagerEntry>, rm: Option<&str>) -> ClusterFile {
        let secret = dir.join("secret");
        crate::control::secret::create_secret_file(&secret).unwrap();
        ClusterFile {
            version: ClusterFile::VERSION,
            provider: Provider::Tcp,
            secret_file: secret,
            executor_managers: managers,
            resource_manager: rm.map(str::to_string),
        }
    }

    #[test]
    fn opens_a_file_with_the_resource_manager_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        file_in(dir.path(), vec![], Some("127.0.0.1:5000"))
            .write(&path)
            .unwrap();
        let c = Cluster::open(Some(&path)).unwrap();
        assert!(c.managers.is_empty() && c.names.is_empty());
        assert_eq!(c.provider, Provider::Tcp);
        assert_eq!(
            c.resource_manager.as_ref().unwrap().url(),
            "http://127.0.0.1:5000"
        );
        // Lease parts name managers the file does not: a client is made for them.
        assert_eq!(c.manager_at("10.0.0.2:7000").url(), "http://10.0.0.2:7000");
        // The secret never shows in debug output.
        let secret = std::fs::read_to_string(dir.path().join("secret")).unwrap();
        assert!(!format!("{c:?}").contains(secret.trim()));
    }

    #[test]
    fn refuses_a_cluster_without_managers() {
        let dir = tempfile::tempdir().unwrap();
        let e = Cluster::from_file(&file_in(dir.path(), vec![], None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither a resource manager nor an executor manager"),
            "{e}"
        );
        let em = ManagerEntry {
            name: "em-0".into(),
            http: "127.0.0.1:1".into(),
            node: "n".into(),
        };
        let c = Cluster::from_file(&file_in(dir.path(), vec![em], None)).unwrap();
        assert_eq!(c.names, ["em-0"]);
        assert!(c.resource_manager.is_none());
    }
}
