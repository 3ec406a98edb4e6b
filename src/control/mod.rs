//! The control plane: HTTP/JSON messages between clients and executor managers, and the
//! messages an executor manager exchanges with the executor processes it spawns.
//!
//! Nothing here is on the invocation path. Every request is authenticated (see
//! [`crate::http::Authenticator`]): a node credential for what only executor managers may do
//! (register, heartbeat, deregister, drain), the cluster secret or a MUNGE credential
//! ([`munge`]) for clients, a per-lease token to renew or release a lease, a per-allocation
//! token to end an allocation and to connect to its workers.

pub mod credential_args;
pub mod executor_manager_api;
pub mod ids;
pub mod munge;
pub mod registration;
pub mod resource_manager_api;
pub mod secret;
pub mod server_args;
