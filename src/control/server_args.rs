//! What both managers (`rfaas executor-manager`, `rfaas resource-manager`) take alike: the
//! flags `--config`, `--listen`, `--secret-file`, the credential flags, `--request-timeout-ms`
//! and the launcher's `--new-session` ([`ServerArgs`], flattened into each one's arguments),
//! reading the TOML configuration file ([`ConfigFile`]), and what is wrong with a
//! configuration ([`ConfigError`]).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::credential_args::CredentialArgs;
use super::munge::MungeSocket;
use super::secret::SecretError;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The flags both managers take; each key is also a key of the configuration file, and a flag
/// wins over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file (every key can also be given as a flag, which wins).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API, host:port (port 0 picks a free one).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// File holding the cluster secret (mode 0600). Never pass a secret itself on a command line.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// The node credential and MUNGE flags.
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// How long a client may take to send a request's head, and then its body, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Start a new session (detach from the terminal); used by `rfaas local-cluster start`.
    #[arg(long, hide = true)]
    pub new_session: bool,
}

impl ServerArgs {
    /// Reads the file named by `--config`: its credential keys ([`CREDENTIAL_KEYS`]) as
    /// [`CredentialKeys`], every other key as a `T` (every key optional: `T::default()` without
    /// a file; a `T` with `deny_unknown_fields` refuses keys neither knows).
    pub fn read_file<T: DeserializeOwned + Default>(&self) -> Result<(T, ConfigFile), ConfigError> {
        let Some(path) = &self.config else {
            return Ok((T::default(), ConfigFile::default()));
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut rest: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let credentials: toml::Table = CREDENTIAL_KEYS
            .iter()
            .filter_map(|k| Some((k.to_string(), rest.remove(*k)?)))
            .collect();
        let credentials = toml::Value::Table(credentials)
            .try_into()
            .map_err(parse_error)?;
        let keys = toml::Value::Table(rest).try_into().map_err(parse_error)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((keys, ConfigFile { dir, credentials }))
    }

    /// The API's address: the flag, else the file's `listen`, else `default`.
    pub fn listen(&self, file: Option<String>, default: &str) -> String {
        self.listen
            .clone()
            .or(file)
            .unwrap_or_else(|| default.to_string())
    }

    /// The credentials in force: each flag wins over the file's key of the same name (its
    /// paths taken from `file`'s directory); a secret file is required.
    pub fn credentials(&self, file: &ConfigFile) -> Result<Credentials, ConfigError> {
        let keys = file.credentials.clone();
        let secret_file = self
            .secret_file
            .clone()
            .or(keys.secret_file.map(|p| file.path(p)))
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "no secret file: give --secret-file FILE or secret_file in the config".into(),
                )
            })?;
        let (node_secret_file, munge) = self.credentials.resolve(
            keys.node_secret_file.map(|p| file.path(p)),
            keys.munge,
            keys.munge_socket,
        );
        Ok(Credentials {
            secret_file,
            node_secret_file,
            munge,
        })
    }

    /// The request timeout in milliseconds: the flag, else the file's, else `default`.
    pub fn request_timeout_ms(&self, file: Option<u64>, default: u64) -> u64 {
        self.request_timeout_ms.or(file).unwrap_or(default)
    }
}

/// The keys of a configuration file that [`CredentialKeys`] holds.
pub const CREDENTIAL_KEYS: [&str; 4] = ["secret_file", "node_secret_file", "munge", "munge_socket"];

/// The credential keys of a configuration file ([`CREDENTIAL_KEYS`]), as read; the other keys
/// are the manager's own file type's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialKeys {
    /// `secret_file`.
    pub secret_file: Option<PathBuf>,
    /// `node_secret_file`.
    pub node_secret_file: Option<PathBuf>,
    /// `munge`.
    pub munge: Option<bool>,
    /// `munge_socket`.
    pub munge_socket: Option<PathBuf>,
}

/// Which credentials a manager accepts, resolved from its flags and configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Cluster secret file.
    pub secret_file: PathBuf,
    /// Node credential file; `None`: the cluster secret acts as one.
    pub node_secret_file: Option<PathBuf>,
    /// MUNGE authentication of clients, through this socket.
    pub munge: Option<MungeSocket>,
}

impl Credentials {
    /// Reads the secret files into the authentication layer of the manager's API.
    pub fn authenticator(&self) -> Result<crate::http::Authenticator, SecretError> {
        crate::http::Authenticator::load(
            &self.secret_file,
            self.node_secret_file.as_deref(),
            self.munge.clone(),
        )
    }
}

/// Where the configuration file is (the paths it names are relative to its directory; to the
/// working directory without a file) and its credential keys.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    dir: PathBuf,
    credentials: CredentialKeys,
}

impl ConfigFile {
    /// `p` from the file: relative paths are taken from the file's directory.
    pub fn path(&self, p: PathBuf) -> PathBuf {
        if p.is_relative() {
            self.dir.join(p)
        } else {
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Keys {
        listen: Option<String>,
    }

    #[test]
    fn the_file_then_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7\"\nsecret_file = \"s\"\nnode_secret_file = \"node\"\n\
             munge_socket = \"/m\"\n",
        )
        .unwrap();
        let mut args = ServerArgs {
            config: Some(path.clone()),
            ..ServerArgs::default()
        };
        let (keys, file): (Keys, _) = args.read_file().unwrap();
        assert_eq!(args.listen(keys.listen.clone(), "d:1"), "127.0.0.1:7");
        let c = args.credentials(&file).unwrap();
        assert_eq!(c.secret_file, dir.path().join("s"));
        assert_eq!(c.node_secret_file, Some(dir.path().join("node")));
        assert_eq!(c.munge, Some(MungeSocket(Some("/m".into()))));
        assert_eq!(file.path("/abs".into()), PathBuf::from("/abs"));

        args.listen = Some("0.0.0.0:9".into());
        args.secret_file = Some("flag".into());
        assert_eq!(args.listen(keys.listen, "d:1"), "0.0.0.0:9");
        let c = args.credentials(&file).unwrap();
        assert_eq!(c.secret_file, PathBuf::from("flag"));
        assert_eq!(c.node_secret_file, Some(dir.path().join("node")));
        assert_eq!(args.request_timeout_ms(Some(5), 10), 5);

        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        let e = args.read_file::<Keys>().unwrap_err().to_string();
        assert!(e.contains("unknown field `listn`"), "{e}");
        std::fs::write(&path, "munge = \"yes\"\n").unwrap();
        let e = args.read_file::<Keys>().unwrap_err().to_string();
        assert!(e.contains("munge") && e.contains("bool"), "{e}");
        std::fs::write(&path, "listen = [\n").unwrap();
        let e = args.read_file::<Keys>().unwrap_err().to_string();
        assert!(e.contains("line"), "a syntax error says where: {e}");
        let none = ServerArgs::default();
        assert_eq!(none.listen(None, "d:1"), "d:1");
        assert!(none
            .credentials(&ConfigFile::default())
            .unwrap_err()
            .to_string()
            .contains("no secret file"));
    }
}
