//! The credential flags both managers take (`--node-secret-file`, `--munge`, `--munge-socket`),
//! and how they combine with the same keys of a TOML configuration file (a flag wins).

use std::path::PathBuf;

use super::munge::MungeSocket;

/// Which credentials a manager accepts beyond the cluster secret (`clap` flags, flattened into
/// the resource manager's and the executor manager's arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialArgs {
    /// File holding the node credential (mode 0600): what executor managers register and
    /// heartbeat with at the resource manager; clients never hold it. Without it, the cluster
    /// secret serves as one (single-user mode).
    #[arg(long, value_name = "FILE")]
    pub node_secret_file: Option<PathBuf>,
    /// Accept MUNGE credentials from clients (Authorization: Munge ...).
    #[arg(long)]
    pub munge: bool,
    /// munged's socket (implies --munge; default: munged's own default).
    #[arg(long, value_name = "PATH")]
    pub munge_socket: Option<PathBuf>,
}

impl CredentialArgs {
    /// The node credential file and the MUNGE socket in force: a flag wins over the file's
    /// `node_secret_file` (already resolved against the file's directory), `munge` and
    /// `munge_socket`; a socket implies MUNGE.
    pub fn resolve(
        &self,
        file_node_secret: Option<PathBuf>,
        file_munge: Option<bool>,
        file_munge_socket: Option<PathBuf>,
    ) -> (Option<PathBuf>, Option<MungeSocket>) {
        let node_secret = self.node_secret_file.clone().or(file_node_secret);
        let socket = self.munge_socket.clone().or(file_munge_socket);
        let munge = (self.munge || file_munge.unwrap_or(false) || socket.is_some())
            .then_some(MungeSocket(socket));
        (node_secret, munge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_a_socket_implies_munge() {
        let none = CredentialArgs::default();
        assert_eq!(none.resolve(None, None, None), (None, None));
        let (n, m) = none.resolve(Some("f".into()), Some(false), Some("/s".into()));
        assert_eq!(n, Some(PathBuf::from("f")));
        assert_eq!(m, Some(MungeSocket(Some("/s".into()))));
        let flags = CredentialArgs {
            node_secret_file: Some("flag".into()),
            munge: true,
            munge_socket: None,
        };
        let (n, m) = flags.resolve(Some("file".into()), Some(false), None);
        assert_eq!(n, Some(PathBuf::from("flag")));
        assert_eq!(m, Some(MungeSocket(None)));
        let (_, m) = none.resolve(None, Some(true), None);
        assert_eq!(m, Some(MungeSocket(None)));
    }
}
