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

/// What a provider runs on, for `rfaas status` and benchmark metadata: for `ofi`, the libfabric
/// provider, fabric and version this host would use (from `RFAAS_OFI_PROVIDER` / `FI_PROVIDER`),
/// or why it cannot; `null` for the others.
pub fn describe(p: Provider) -> serde_json::Value {
    match p {
        #[cfg(feature = "libfabric")]
        Provider::Ofi => match super::ofi::OfiFabric::new() {
            Ok(f) => serde_json::to_value(f.info()).unwrap_or(serde_json::Value::Null),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
        #[cfg(not(feature = "libfabric"))]
        Provider::Ofi => serde_json::json!({ "error": "built without the `libfabric` feature" }),
        _ => serde_json::Value::Null,
    }
}

/// One line describing [`describe`]'s answer for humans (`None` when there is nothing to say).
pub fn describe_line(p: Provider) -> Option<String> {
    let v = describe(p);
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Some(format!("{p} on this host: {e}"));
    }
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    v.is_object().then(|| {
        format!(
            "{p} on this host: libfabric {} provider {}, fabric {}, atomics {}",
            s("libfabric_version"),
            s("provider"),
            s("fabric"),
            v.get("atomics").and_then(|x| x.as_bool()).unwrap_or(false)
        )
    })
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
