//! The control plane: HTTP/JSON messages between clients and executor managers, and the
//! messages an executor manager exchanges with the executor processes it spawns.
//!
//! Nothing here is on the invocation path. Every request is authenticated: the cluster secret
//! (`Authorization: Bearer <secret>`) between clients or resource manager and executor managers,
//! and a per-allocation random token for the fabric connections to an executor's workers.

pub mod executor_manager_api;
pub mod resource_manager_api;
pub mod secret;
