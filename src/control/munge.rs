//! MUNGE credentials: how a server learns which local user is calling, on clusters that run
//! `munged` (every Slurm cluster does). A client runs `munge` to get a fresh credential and
//! sends it as `Authorization: Munge <credential>`; the server hands it to `unmunge` on standard
//! input (never on a command line) and reads the user and group ids `munged` vouches for.
//! `munged` refuses a credential it has decoded before, so a captured one cannot be replayed,
//! and one older than its time-to-live.
//!
//! Both sides talk to `munged` through its socket: the default one, or the one given (tests
//! start their own `munged` with their own key and socket).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest credential accepted, bytes (a MUNGE credential without payload is about 130).
pub const MAX_CREDENTIAL_BYTES: usize = 4096;

/// A MUNGE operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MungeError {
    /// `munge` or `unmunge` could not be run.
    #[error("cannot run {tool}: {source} (install the munge package)")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program did not answer in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, Duration),
    /// `munged` refused the credential (invalid, expired, replayed, another key).
    #[error("credential refused: {0}")]
    Refused(String),
    /// The credential is not something `munge` produces.
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
}

/// The identity a valid credential proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MungeIdentity {
    /// User id of the process that made the credential.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

/// Where `munged` listens: `None` for its default socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MungeSocket(pub Option<PathBuf>);

impl MungeSocket {
    /// The socket at `path`.
    pub fn at(path: &Path) -> MungeSocket {
        MungeSocket(Some(path.to_path_buf()))
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        if let Some(p) = &self.0 {
            c.arg("--socket").arg(p);
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// A fresh credential for the calling user (no payload).
    pub fn encode(&self, timeout: Duration) -> Result<String, MungeError> {
        let mut c = self.command("munge");
        c.arg("--no-input");
        let out = run(c, b"", "munge", timeout)?;
        if !out.status.success() {
            return Err(MungeError::Refused(stderr_line(&out.stderr)));
        }
        let cred = String::from_utf8_lossy(&out.stdout).trim().to_string();
        check_shape(&cred)?;
        Ok(cred)
    }

    /// Who made `credential`, as `munged` vouches; an error when it is invalid, expired or
    /// replayed. Blocking: run it off an async executor's threads.
    pub fn decode(&self, credential: &str, timeout: Duration) -> Result<MungeIdentity, MungeError> {
        check_shape(credential)?;
        let mut c = self.command("unmunge");
        c.args(["--numeric", "--keys=UID,GID", "--output=/dev/null"]);
        let out = run(c, credential.as_bytes(), "unmunge", timeout)?;
        if !out.status.success() {
            let why = match status_name(out.status.code()) {
                Some(name) => name.to_string(),
                None => stderr_line(&out.stderr),
            };
            return Err(MungeError::Refused(why));
        }
        parse_identity(&String::from_utf8_lossy(&out.stdout))
            .ok_or(MungeError::Malformed("unmunge printed no UID and GID"))
    }
}

/// Refuses what cannot be a credential before any process sees it.
fn check_shape(cred: &str) -> Result<(), MungeError> {
    if cred.len() > MAX_CREDENTIAL_BYTES {
        return Err(MungeError::Malformed("longer than 4096 bytes"));
    }
    let body = cred
        .strip_prefix("MUNGE:")
        .and_then(|s| s.strip_suffix(':'))
        .ok_or(MungeError::Malformed("not of the form MUNGE:...:"))?;
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err(MungeError::Malformed("not base64"));
    }
    Ok(())
}

/// `UID: 1000\nGID: 1000` → the identity.
fn parse_identity(text: &str) -> Option<MungeIdentity> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    Some(MungeIdentity {
        uid: field("UID:")?,
        gid: field("GID:")?,
    })
}

/// What `unmunge`'s exit status says (the `munge_err_t` codes of munge.h).
fn status_name(code: Option<i32>) -> Option<&'static str> {
    Some(match code? {
        6 => "cannot reach munged's socket",
        7 => "munged timed out",
        8..=12 | 14 => "invalid credential",
        13 => "credential of another realm",
        15 => "expired credential",
        16 => "rewound credential (clock skew)",
        17 => "replayed credential",
        18 => "unauthorized credential",
        _ => return None,
    })
}

fn stderr_line(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    s.strip_prefix("unmunge: Error: ")
        .or_else(|| s.strip_prefix("munge: Error: "))
        .unwrap_or(s)
        .chars()
        .take(200)
        .collect()
}

/// Runs `cmd` with `input` on its stdin, killing it after `timeout`.
fn run(
    mut cmd: Command,
    input: &[u8],
    tool: &'static str,
    timeout: Duration,
) -> Result<std::process::Output, MungeError> {
    let mut child = cmd
        .spawn()
        .map_err(|source| MungeError::Spawn { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A refused write means the tool exited early; its status says why.
        let _ = stdin.write_all(input);
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MungeError::Timeout(tool, timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(source) => return Err(MungeError::Spawn { tool, source }),
        }
    }
    child
        .wait_with_output()
        .map_err(|source| MungeError::Spawn { tool, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_identities() {
        assert!(check_shape("MUNGE:AwQDAAB+abc=:").is_ok());
        assert!(check_shape("MUNGE::").is_err());
        assert!(check_shape("Bearer x").is_err());
        assert!(check_shape("MUNGE:a b:").is_err());
        assert!(check_shape(&format!("MUNGE:{}:", "a".repeat(5000))).is_err());
        assert_eq!(
            parse_identity("UID:             1000\nGID:             27\n\n"),
            Some(MungeIdentity { uid: 1000, gid: 27 })
        );
        assert_eq!(parse_identity("UID: 5\n"), None);
    }
}
