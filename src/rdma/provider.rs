//! Choosing a provider by name (CLI, config, or the `RFAAS_PROVIDER` environment variable) and
//! running generic code over it.

use std::fmt;
use std::str::FromStr;

use super::error::{FabricError, Result};
use super::Fabric;

/// The fabric providers rfaas knows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Shared memory between processes of one node (the default).
    #[default]
    Shm,
    /// TCP streams with a target-side progress thread.
    Tcp,
    /// InfiniBand/RoCE verbs (feature `verbs`).
    Verbs,
    /// libfabric reliable-datagram endpoints (feature `libfabric`): Slingshot, EFA, Omni-Path,
    /// verbs, and libfabric's own shm and tcp. The libfabric provider comes from
    /// `RFAAS_OFI_PROVIDER` or `FI_PROVIDER`.
    Ofi,
}

impl Provider {
    /// Every provider, in the order they are documented.
    pub const ALL: [Provider; 4] = [Provider::Shm, Provider::Tcp, Provider::Verbs, Provider::Ofi];

    /// The name used on command lines and in files.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Shm => "shm",
            Provider::Tcp => "tcp",
            Provider::Verbs => "verbs",
            Provider::Ofi => "ofi",
        }
    }

    /// The provider named by `RFAAS_PROVIDER`, or shm when it is unset.
    pub fn from_env() -> Result<Provider> {
        match std::env::var(crate::env::PROVIDER) {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(Provider::default()),
        }
    }

    /// Opens a domain of this provider and runs `user` over it.
    ///
    /// Fails with [`FabricError::NotCompiled`] for verbs or ofi in a build without the `verbs` or
    /// `libfabric` feature,
    /// and with [`FabricError::Unavailable`] where the provider cannot run (no RDMA device).
    pub fn run<U: FabricUser>(self, user: U) -> Result<U::Output> {
        match self {
            Provider::Shm => Ok(user.run(super::shm::ShmFabric::new()?)),
            Provider::Tcp => Ok(user.run(super::tcp::TcpFabric::new()?)),
            #[cfg(feature = "verbs")]
            Provider::Verbs => Ok(user.run(super::verbs::VerbsFabric::open_default()?)),
            #[cfg(not(feature = "verbs"))]
            Provider::Verbs => Err(FabricError::NotCompiled {
                provider: "verbs",
                feature: "verbs",
            }),
            #[cfg(feature = "libfabric")]
            Provider::Ofi => Ok(user.run(super::ofi::OfiFabric::new()?)),
            #[cfg(not(feature = "libfabric"))]
            Provider::Ofi => Err(FabricError::NotCompiled {
                provider: "ofi",
                feature: "libfabric",
            }),
        }
    }
}

/// Code that runs over any provider: the generic "closure" that [`Provider::run`] calls with the
/// concrete fabric, so that hot loops are monomorphised per provider.
pub trait FabricUser {
    /// What the code returns.
    type Output;
    /// Runs over `fabric`.
    fn run<F: Fabric>(self, fabric: F) -> Self::Output;
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = FabricError;
    fn from_str(s: &str) -> Result<Provider> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shm" => Ok(Provider::Shm),
            "tcp" => Ok(Provider::Tcp),
            "verbs" | "ib" | "rdma" => Ok(Provider::Verbs),
            "ofi" | "libfabric" => Ok(Provider::Ofi),
            other => Err(FabricError::UnknownProvider(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.name().parse::<Provider>().unwrap(), p);
        }
        assert!(matches!(
            "nope".parse::<Provider>(),
            Err(FabricError::UnknownProvider(_))
        ));
    }
}
