//! [`Credential`]: how a client proves who it is to the resource manager and the executor
//! managers: the cluster secret (single-user setups), or a MUNGE credential made fresh for
//! every request (clusters that run `munged`, as every Slurm cluster does: the servers then
//! know the calling user, and the user needs no secret file).
//!
//! A client uses MUNGE when asked in code ([`Credential::Munge`], e.g. with
//! [`super::Cluster::from_file_with`]) or in the environment: `RFAAS_MUNGE=1` (munged's
//! default socket) or `RFAAS_MUNGE_SOCKET=PATH` ([`crate::env::MUNGE`],
//! [`crate::env::MUNGE_SOCKET`]); then the cluster file's secret is not read.

use std::time::Duration;

use super::error::ClientError;
use crate::control::munge::MungeSocket;

/// How long making one MUNGE credential may take (a `munge` run against `munged`).
const MUNGE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The cluster secret: `Authorization: Bearer <secret>`.
    Secret(String),
    /// A fresh MUNGE credential per request, from `munged` at this socket:
    /// `Authorization: Munge <credential>` (a credential works once).
    Munge(MungeSocket),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret(<secret>)"),
            Credential::Munge(s) => f.debug_tuple("Munge").field(s).finish(),
        }
    }
}

impl Credential {
    /// MUNGE, when the environment asks for it (`RFAAS_MUNGE_SOCKET=PATH`, or `RFAAS_MUNGE`
    /// set to `1`/`true`/`yes`); `None` otherwise. Any other `RFAAS_MUNGE` value is an error,
    /// never ignored.
    pub fn munge_from_env() -> Result<Option<Credential>, ClientError> {
        Self::munge_from(
            std::env::var_os(crate::env::MUNGE_SOCKET),
            std::env::var(crate::env::MUNGE).ok(),
        )
    }

    fn munge_from(
        socket: Option<std::ffi::OsString>,
        flag: Option<String>,
    ) -> Result<Option<Credential>, ClientError> {
        if let Some(s) = socket.filter(|s| !s.is_empty()) {
            return Ok(Some(Credential::Munge(MungeSocket(Some(s.into())))));
        }
        match flag.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v.is_empty() || v == "0" || v == "false" || v == "no" => Ok(None),
            Some(v) if v == "1" || v == "true" || v == "yes" => {
                Ok(Some(Credential::Munge(MungeSocket(None))))
            }
            Some(v) => Err(ClientError::Config(format!(
                "{}={v}: use 1 or 0 (or set {} to munged's socket)",
                crate::env::MUNGE,
                crate::env::MUNGE_SOCKET
            ))),
        }
    }

    /// The `Authorization` header of one request (a MUNGE credential is made for each).
    pub fn header(&self) -> Result<String, ClientError> {
        match self {
            Credential::Secret(s) => Ok(format!("Bearer {s}")),
            Credential::Munge(socket) => socket
                .encode(MUNGE_TIMEOUT)
                .map(|c| format!("Munge {c}"))
                .map_err(|e| ClientError::Config(format!("cannot make a MUNGE credential: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_picks_munge_and_a_bad_value_is_an_error() {
        assert_eq!(Credential::munge_from(None, None).unwrap(), None);
        assert_eq!(
            Credential::munge_from(None, Some("0".into())).unwrap(),
            None
        );
        assert_eq!(
            Credential::munge_from(None, Some("1".into())).unwrap(),
            Some(Credential::Munge(MungeSocket(None)))
        );
        assert_eq!(
            Credential::munge_from(Some("/run/m.sock".into()), None).unwrap(),
            Some(Credential::Munge(MungeSocket(Some("/run/m.sock".into()))))
        );
        let e = Credential::munge_from(None, Some("maybe".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RFAAS_MUNGE=maybe"), "{e}");
        let secret = Credential::Secret("hunter2".into());
        assert_eq!(secret.header().unwrap(), "Bearer hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn an_unreachable_munged_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credential::Munge(MungeSocket::at(&dir.path().join("no-socket")));
        match c.header() {
            Err(ClientError::Config(m)) => assert!(m.contains("MUNGE"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
