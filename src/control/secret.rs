//! Secrets: the cluster secret (read from a file of mode 0600, never from a command line) and
//! per-allocation tokens, compared in constant time.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use subtle::ConstantTimeEq;

/// Secret handling failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read or written.
    #[error("secret file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by others.
    #[error(
        "secret file {path} has mode {mode:o}: it must be readable by its owner only (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The file holds no secret.
    #[error("secret file {0} is empty")]
    Empty(String),
    /// The system random generator failed.
    #[error("random generator: {0}")]
    Random(String),
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(b)
}

/// A fresh random token, hex encoded.
pub fn new_token() -> Result<String, SecretError> {
    Ok(hex::encode(random_bytes::<
        { crate::control::executor_manager_api::TOKEN_LEN },
    >()?))
}

/// Constant-time equality of two secrets.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let p = path.display().to_string();
    let md = std::fs::metadata(path).map_err(|source| SecretError::Io {
        path: p.clone(),
        source,
    })?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions { path: p, mode });
    }
    let s = std::fs::read_to_string(path).map_err(|source| SecretError::Io {
        path: p.clone(),
        source,
    })?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(SecretError::Empty(p));
    }
    Ok(s)
}

/// Creates a secret file (mode 0600) holding a fresh random secret; returns the secret.
pub fn create_secret_file(path: &Path) -> Result<String, SecretError> {
    let p = path.display().to_string();
    let secret = new_token()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SecretError::Io {
            path: p.clone(),
            source,
        })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        SecretError::Io {
            path: p.clone(),
            source,
        }
    })?;
    std::io::Write::write_all(&mut f, secret.as_bytes())
        .map_err(|source| SecretError::Io { path: p, source })?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        let s = create_secret_file(&p).unwrap();
        assert_eq!(s.len(), 64);
        assert_eq!(read_secret_file(&p).unwrap(), s);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_secret_file(&p),
            Err(SecretError::Permissions { .. })
        ));
        assert!(
            secrets_equal(b"abc", b"abc")
                && !secrets_equal(b"abc", b"abd")
                && !secrets_equal(b"a", b"ab")
        );
        assert_ne!(new_token().unwrap(), new_token().unwrap());
    }
}
