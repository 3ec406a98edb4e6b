//! Function assets on the executor manager: the checks of an allocation request's assets
//! ([`validate_assets`]: names, count, sizes against the configured limits) and where their
//! cached files are ([`cached_assets`]). Uploads go through the same path as libraries
//! ([`Blob`]), into a cache of their own (`<cache dir>/assets`).

use crate::control::executor_manager_api::{AssetRef, ExecutorAsset};
use crate::function::ContentHash;

use super::config::ManagerConfig;
use super::libraries::Libraries;
use super::service::ServiceError;

/// Checks the assets of an allocation request against the limits (`max_assets`,
/// `max_assets_bytes`, the upload limit `max_library_bytes`) and the naming rules; returns their
/// hashes, in order.
pub fn validate_assets(
    assets: &[AssetRef],
    cfg: &ManagerConfig,
) -> Result<Vec<ContentHash>, ServiceError> {
    let bad = |m: String| Err(ServiceError::BadRequest(m));
    if assets.len() > cfg.max_assets as usize {
        return bad(format!(
            "{} assets are too many: this executor manager accepts at most {} per allocation \
             (max_assets)",
            assets.len(),
            cfg.max_assets
        ));
    }
    let mut total: u64 = 0;
    let mut hashes = Vec::with_capacity(assets.len());
    for (i, a) in assets.iter().enumerate() {
        crate::function::assets::check_asset_name(&a.name).map_err(ServiceError::BadRequest)?;
        if assets[..i].iter().any(|b| b.name == a.name) {
            return bad(format!("asset {:?} is named twice", a.name));
        }
        let Ok(hash) = a.sha256.parse::<ContentHash>() else {
            return bad(format!(
                "asset {:?}: sha256 must be the SHA-256 (64 hex digits) of an asset uploaded before",
                a.name
            ));
        };
        if a.size > cfg.max_library_bytes as u64 {
            return bad(format!(
                "asset {:?} has {} bytes, more than the {} one upload may have (max_library_bytes)",
                a.name, a.size, cfg.max_library_bytes
            ));
        }
        total = total.saturating_add(a.size);
        hashes.push(hash);
    }
    if total > cfg.max_assets_bytes {
        return bad(format!(
            "the assets have {total} bytes together, more than the {} this executor manager \
             accepts per allocation (max_assets_bytes)",
            cfg.max_assets_bytes
        ));
    }
    Ok(hashes)
}

/// What [`Service::store_blob`](super::service::Service::store_blob) stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blob {
    /// A function library: must be an ELF shared object.
    Library,
    /// A function asset: any bytes.
    Asset,
}

impl Blob {
    /// "library" or "asset", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Blob::Library => "library",
            Blob::Asset => "asset",
        }
    }
}

/// The verified cached files of `assets` (hashes from [`validate_assets`]), their sizes checked
/// against the request's: 404 for an asset never uploaded (or evicted), 400 for a wrong size.
/// Blocking (may hash a file).
pub fn cached_assets(
    cache: &Libraries,
    assets: &[AssetRef],
    hashes: &[ContentHash],
) -> Result<Vec<ExecutorAsset>, ServiceError> {
    assets
        .iter()
        .zip(hashes)
        .map(|(a, hash)| {
            let (path, len) = cache.path_and_len(hash).map_err(|_| {
                ServiceError::NotFound(format!(
                    "unknown asset {:?} ({hash}): upload it first with PUT /v1/assets/{hash}",
                    a.name
                ))
            })?;
            if len != a.size {
                return Err(ServiceError::BadRequest(format!(
                    "asset {:?} has {len} bytes, not {} as the request says",
                    a.name, a.size
                )));
            }
            Ok(ExecutorAsset {
                name: a.name.clone(),
                path: path.display().to_string(),
                sha256: hash.to_hex(),
                size: len,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor_manager::config::ManagerArgs;

    fn config(dir: &std::path::Path) -> ManagerConfig {
        let secret = dir.join("secret");
        std::fs::write(&secret, "x").unwrap();
        let args = ManagerArgs {
            server: crate::control::server_args::ServerArgs {
                secret_file: Some(secret),
                ..Default::default()
            },
            max_assets: Some(2),
            max_assets_bytes: Some(100),
            max_library_bytes: Some(60),
            ..Default::default()
        };
        ManagerConfig::load(&args).unwrap()
    }

    fn asset(name: &str, size: u64) -> AssetRef {
        AssetRef {
            name: name.into(),
            sha256: "ab".repeat(32),
            size,
        }
    }

    #[test]
    fn validation_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let ok = validate_assets(&[asset("a", 50), asset("b", 50)], &cfg).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(validate_assets(&[], &cfg).unwrap().is_empty());
        let cases: Vec<(Vec<AssetRef>, &str)> = vec![
            (
                vec![asset("a", 1), asset("b", 1), asset("c", 1)],
                "max_assets",
            ),
            (vec![asset("a", 60), asset("b", 41)], "max_assets_bytes"),
            (vec![asset("a", 61)], "max_library_bytes"),
            (vec![asset("a", 1), asset("a", 1)], "named twice"),
            (vec![asset(".a", 1)], "invalid asset name"),
            (
                vec![AssetRef {
                    sha256: "xyz".into(),
                    ..asset("a", 1)
                }],
                "SHA-256",
            ),
        ];
        for (assets, word) in cases {
            let e = validate_assets(&assets, &cfg).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains(word), "{e} should mention {word}");
        }
    }
}
