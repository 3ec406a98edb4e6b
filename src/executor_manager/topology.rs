//! NIC locality: the order in which an executor manager rents out its cores.
//!
//! Executors should run on cores near the network card their clients' RDMA traffic goes
//! through. At startup the manager finds that NIC (the RDMA device, i.e. an OpenFabrics OS
//! device such as `mlx5_0`, or the one named by the `nic` key, which may also be a network
//! interface such as `eth0`) and ranks each of its cores ([`Rank`]): in the cpuset of the NIC's
//! first non-I/O ancestor first, then on the NIC's NUMA node(s), then on its package, then the
//! rest; cores of one rank keep their cpuset order. Allocations take cores in that order
//! ([`super::cores::CorePool`]).
//!
//! * With the `hwloc` feature the topology (with I/O devices) is loaded once, here; with several
//!   RDMA devices the one nearest most of the manager's cores wins.
//! * Without it, or for a named device hwloc does not list, sysfs answers for a named device
//!   (`/sys/class/{infiniband,net}/NAME/device`, walking up to the PCI device's
//!   `local_cpulist` and `numa_node`); there is no automatic detection.
//! * No NIC found: cpuset order (an info log). A named NIC that does not exist: an error at
//!   startup. A named NIC without locality information (a virtual interface): cpuset order
//!   and a warning.
//!
//! [`rank`] and [`order_by_rank`] are pure.

use std::path::{Path, PathBuf};

/// Where a core sits relative to the NIC; lower is nearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// In the cpuset of the NIC's first non-I/O ancestor.
    Near,
    /// On a NUMA node of that ancestor.
    SameNuma,
    /// On the package (socket) of that ancestor.
    SamePackage,
    /// Anywhere else (or nothing is known).
    Other,
}

/// The CPUs around a NIC (OS CPU indices, any order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuLocality {
    /// The cpuset of the NIC's first non-I/O ancestor.
    pub near: Vec<u32>,
    /// The CPUs of the NUMA node(s) of that ancestor.
    pub numa: Vec<u32>,
    /// The CPUs of the package holding that ancestor.
    pub package: Vec<u32>,
}

/// The rank of `core` relative to a NIC with locality `loc` (`None`: unknown, [`Rank::Other`]).
pub fn rank(core: u32, loc: Option<&CpuLocality>) -> Rank {
    match loc {
        Some(l) if l.near.contains(&core) => Rank::Near,
        Some(l) if l.numa.contains(&core) => Rank::SameNuma,
        Some(l) if l.package.contains(&core) => Rank::SamePackage,
        _ => Rank::Other,
    }
}

/// The cores, nearest first; cores of equal rank keep their given order.
pub fn order_by_rank(ranked: &[(u32, Rank)]) -> Vec<u32> {
    let mut v = ranked.to_vec();
    v.sort_by_key(|(_, r)| *r); // stable
    v.into_iter().map(|(c, _)| c).collect()
}

/// `cores` (in cpuset order) in preference order for a NIC with locality `loc`.
pub fn preferred_order(cores: &[u32], loc: Option<&CpuLocality>) -> Vec<u32> {
    let ranked: Vec<(u32, Rank)> = cores.iter().map(|&c| (c, rank(c, loc))).collect();
    order_by_rank(&ranked)
}

/// The NIC a manager orders its cores by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Its OS name (`mlx5_0`, `eth0`).
    pub name: String,
    /// Where it was found: `hwloc` or `sysfs`.
    pub source: &'static str,
    /// The CPUs around it (`None`: not known, e.g. a virtual interface).
    pub locality: Option<CpuLocality>,
}

/// A manager's cores in the order allocations take them, and the NIC behind that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreOrder {
    /// Cores, nearest the NIC first.
    pub cores: Vec<u32>,
    /// The NIC, if one was found or named.
    pub nic: Option<Nic>,
}

impl CoreOrder {
    /// The order without a NIC: `cores` as given.
    pub fn plain(cores: &[u32]) -> CoreOrder {
        CoreOrder {
            cores: cores.to_vec(),
            nic: None,
        }
    }

    /// The cores of the order in the NIC's near set.
    pub fn near_nic(&self) -> Vec<u32> {
        let loc = self.nic.as_ref().and_then(|n| n.locality.as_ref());
        self.cores
            .iter()
            .copied()
            .filter(|&c| rank(c, loc) == Rank::Near)
            .collect()
    }
}

/// The NIC named in the configuration does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no network device {name:?} on this node (the nic key / --nic flag); devices here: {}",
    list_or_none(.known)
)]
pub struct NicNotFound {
    /// The name asked for.
    pub name: String,
    /// RDMA and network devices that do exist.
    pub known: Vec<String>,
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Orders `cores` (the manager's, in cpuset order) by their distance to the RDMA NIC, or to
/// `named` when given. Loads the hwloc topology (once: call this once per process).
pub fn discover(cores: &[u32], named: Option<&str>) -> Result<CoreOrder, NicNotFound> {
    let found = match named {
        Some(name) => Some(find_named(name)?),
        None => find_rdma(cores),
    };
    Ok(match found {
        Some(nic) => CoreOrder {
            cores: preferred_order(cores, nic.locality.as_ref()),
            nic: Some(nic),
        },
        None => CoreOrder::plain(cores),
    })
}

fn find_named(name: &str) -> Result<Nic, NicNotFound> {
    #[cfg(feature = "hwloc")]
    match hw::nics() {
        Ok(nics) => {
            if let Some(n) = nics.into_iter().find(|n| n.name == name) {
                return Ok(n);
            }
        }
        Err(e) => tracing::warn!("hwloc: cannot load the topology ({e}); asking sysfs"),
    }
    sysfs::nic(Path::new(sysfs::ROOT), name).ok_or_else(|| NicNotFound {
        name: name.to_string(),
        known: sysfs::device_names(Path::new(sysfs::ROOT)),
    })
}

#[cfg(feature = "hwloc")]
fn find_rdma(cores: &[u32]) -> Option<Nic> {
    let nics = match hw::rdma_nics() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("hwloc: cannot load the topology ({e}); cores in cpuset order");
            return None;
        }
    };
    // With several RDMA devices: the one nearest most of our cores (the first on a tie).
    let near = |n: &Nic| {
        cores
            .iter()
            .filter(|&&c| rank(c, n.locality.as_ref()) == Rank::Near)
            .count()
    };
    let mut best: Option<Nic> = None;
    for n in nics {
        if best.as_ref().map_or(true, |b| near(&n) > near(b)) {
            best = Some(n);
        }
    }
    best
}

#[cfg(not(feature = "hwloc"))]
fn find_rdma(_cores: &[u32]) -> Option<Nic> {
    None
}

#[cfg(feature = "hwloc")]
mod hw {
    use hwlocality::cpu::cpuset::CpuSet;
    use hwlocality::object::attributes::ObjectAttributes;
    use hwlocality::object::types::{OSDeviceType, ObjectType};
    use hwlocality::object::TopologyObject;
    use hwlocality::topology::builder::TypeFilter;
    use hwlocality::Topology;

    use super::{CpuLocality, Nic};

    fn load() -> Result<Topology, String> {
        Topology::builder()
            .with_io_type_filter(TypeFilter::KeepImportant)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())
    }

    fn cpus(set: &CpuSet) -> Vec<u32> {
        set.iter_set().map(|p| usize::from(p) as u32).collect()
    }

    fn locality(topo: &Topology, dev: &TopologyObject) -> Option<CpuLocality> {
        let anc = dev.first_non_io_ancestor()?;
        let set = anc.cpuset()?;
        let near = cpus(&set);
        let numa = anc
            .nodeset()
            .map(|ns| cpus(&CpuSet::from_nodeset(topo, ns)))
            .unwrap_or_default();
        let package = if anc.object_type() == ObjectType::Package {
            near.clone()
        } else {
            anc.first_ancestor_with_type(ObjectType::Package)
                .and_then(|p| p.cpuset())
                .map(|s| cpus(&s))
                .unwrap_or_default()
        };
        Some(CpuLocality {
            near,
            numa,
            package,
        })
    }

    fn devices(rdma_only: bool) -> Result<Vec<Nic>, String> {
        let topo = load()?;
        let mut out = Vec::new();
        for dev in topo.os_devices() {
            let Some(ObjectAttributes::OSDevice(attr)) = dev.attributes() else {
                continue;
            };
            let wanted = match attr.device_type() {
                OSDeviceType::OpenFabrics => true,
                OSDeviceType::Network => !rdma_only,
                _ => false,
            };
            let Some(name) = dev.name().and_then(|n| n.to_str().ok()) else {
                continue;
            };
            if wanted {
                out.push(Nic {
                    name: name.to_string(),
                    source: "hwloc",
                    locality: locality(&topo, dev),
                });
            }
        }
        Ok(out)
    }

    /// Every RDMA (OpenFabrics) device.
    pub(super) fn rdma_nics() -> Result<Vec<Nic>, String> {
        devices(true)
    }

    /// Every RDMA or network device.
    pub(super) fn nics() -> Result<Vec<Nic>, String> {
        devices(false)
    }
}

mod sysfs {
    use super::*;

    pub(super) const ROOT: &str = "/sys";

    fn read_cpulist(path: &Path) -> Option<Vec<u32>> {
        let text = std::fs::read_to_string(path).ok()?;
        let text = text.trim();
        if text.is_empty() {
            return Some(Vec::new());
        }
        crate::executor_manager::config::parse_cpulist(text).ok()
    }

    /// The device directory of `name` (an RDMA device or a network interface), if it exists.
    fn class_dir(root: &Path, name: &str) -> Option<PathBuf> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return None;
        }
        ["class/infiniband", "class/net"]
            .iter()
            .map(|c| root.join(c).join(name))
            .find(|p| p.exists())
    }

    /// A named device's locality from sysfs: the nearest ancestor of its device with a
    /// `local_cpulist` (a virtio interface's is its PCI parent's).
    pub(super) fn nic(root: &Path, name: &str) -> Option<Nic> {
        let dir = class_dir(root, name)?;
        let mut dev = std::fs::canonicalize(dir.join("device")).ok();
        let devices = std::fs::canonicalize(root.join("devices")).unwrap_or(root.join("devices"));
        let mut locality = None;
        while let Some(d) = dev {
            if !d.starts_with(&devices) || d == devices {
                break;
            }
            if let Some(near) = read_cpulist(&d.join("local_cpulist")).filter(|n| !n.is_empty()) {
                let numa = std::fs::read_to_string(d.join("numa_node"))
                    .ok()
                    .and_then(|n| n.trim().parse::<i64>().ok())
                    .filter(|n| *n >= 0)
                    .and_then(|n| {
                        read_cpulist(&root.join(format!("devices/system/node/node{n}/cpulist")))
                    })
                    .unwrap_or_default();
                locality = Some(CpuLocality {
                    near,
                    numa,
                    package: Vec::new(),
                });
                break;
            }
            dev = d.parent().map(Path::to_path_buf);
        }
        Some(Nic {
            name: name.to_string(),
            source: "sysfs",
            locality,
        })
    }

    /// RDMA devices and network interfaces that exist, for an error message.
    pub(super) fn device_names(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = ["class/infiniband", "class/net"]
            .iter()
            .filter_map(|c| std::fs::read_dir(root.join(c)).ok())
            .flat_map(|d| d.flatten())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_orders_nearest_first() {
        // Two packages of two NUMA nodes each; the NIC hangs off node 2 (cores 8-11).
        let loc = CpuLocality {
            near: vec![8, 9, 10, 11],
            numa: vec![8, 9, 10, 11],
            package: (8..16).collect(),
        };
        assert_eq!(rank(9, Some(&loc)), Rank::Near);
        assert_eq!(rank(12, Some(&loc)), Rank::SamePackage);
        assert_eq!(rank(0, Some(&loc)), Rank::Other);
        assert_eq!(rank(9, None), Rank::Other);
        let cores: Vec<u32> = (0..16).collect();
        let mut want: Vec<u32> = (8..16).collect();
        want.extend(0..8);
        assert_eq!(preferred_order(&cores, Some(&loc)), want);
        // A Slurm cpuset that is partly near: near ones first, the rest in cpuset order.
        assert_eq!(
            preferred_order(&[2, 3, 10, 11, 13], Some(&loc)),
            vec![10, 11, 13, 2, 3]
        );
        // No NIC: cpuset order.
        assert_eq!(preferred_order(&[3, 1, 2], None), vec![3, 1, 2]);
    }

    #[test]
    fn numa_comes_before_package_and_ties_keep_their_order() {
        let ranked = [
            (0, Rank::Other),
            (1, Rank::SamePackage),
            (2, Rank::SameNuma),
            (3, Rank::Near),
            (4, Rank::SameNuma),
            (5, Rank::Near),
        ];
        assert_eq!(order_by_rank(&ranked), vec![3, 5, 2, 4, 1, 0]);
        let loc = CpuLocality {
            near: vec![4],
            numa: vec![4, 5],
            package: vec![4, 5, 6],
        };
        assert_eq!(preferred_order(&[7, 6, 5, 4], Some(&loc)), vec![4, 5, 6, 7]);
        let order = CoreOrder {
            cores: vec![4, 5, 6, 7],
            nic: Some(Nic {
                name: "mlx5_0".into(),
                source: "hwloc",
                locality: Some(loc),
            }),
        };
        assert_eq!(order.near_nic(), vec![4]);
        assert_eq!(CoreOrder::plain(&[1, 0]).near_nic(), Vec::<u32>::new());
    }

    #[test]
    fn sysfs_walks_up_to_the_pci_device() {
        // A fake sysfs: a virtio interface under a PCI device on NUMA node 1, and a virtual one.
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let pci = r.join("devices/pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(pci.join("virtio2")).unwrap();
        std::fs::write(pci.join("local_cpulist"), "4-7\n").unwrap();
        std::fs::write(pci.join("numa_node"), "1\n").unwrap();
        std::fs::create_dir_all(r.join("devices/system/node/node1")).unwrap();
        std::fs::write(r.join("devices/system/node/node1/cpulist"), "4-7,12-15\n").unwrap();
        std::fs::create_dir_all(r.join("class/net/eth0")).unwrap();
        std::os::unix::fs::symlink(pci.join("virtio2"), r.join("class/net/eth0/device")).unwrap();
        std::fs::create_dir_all(r.join("class/net/lo")).unwrap();

        let eth0 = sysfs::nic(r, "eth0").unwrap();
        let loc = eth0.locality.unwrap();
        assert_eq!(loc.near, vec![4, 5, 6, 7]);
        assert_eq!(loc.numa, vec![4, 5, 6, 7, 12, 13, 14, 15]);
        let lo = sysfs::nic(r, "lo").unwrap();
        assert_eq!(lo.locality, None, "no device: exists, no locality");
        assert!(sysfs::nic(r, "mlx5_0").is_none());
        assert!(sysfs::nic(r, "../net").is_none());
        assert_eq!(sysfs::device_names(r), vec!["eth0", "lo"]);
    }

    #[test]
    fn a_named_nic_that_does_not_exist_is_an_error() {
        let err = discover(&[0], Some("no-such-nic0")).unwrap_err();
        assert_eq!(err.name, "no-such-nic0");
        assert!(err.to_string().contains("no-such-nic0"), "{err}");
        // Without a name, a machine without RDMA keeps the cpuset order.
        let order = discover(&[1, 0], None).unwrap();
        if order.nic.is_none() {
            assert_eq!(order.cores, vec![1, 0]);
        }
        let mut sorted = order.cores.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1]);
    }
}
