//! Compute kernels shared by the example function library (`jobs/functions`, which exports
//! them with the rFaaS ABI) and by clients that run the same work locally, such as the MPI
//! example that splits a Black–Scholes batch between local threads and remote workers.

pub mod black_scholes;
