//! The native part of the Python package `rfaas` (`rfaas._native`): PyO3 wrappers over the
//! rfaas client library ([`rfaas::client`]) and its MPI layer ([`rfaas::mpi_glue`]). The
//! package's Python modules (`python/rfaas/`) add the exception classes, `rfaas.Future` and
//! `rfaas.mpi.Session`, and document the API for `help(rfaas)`.
//!
//! Built for the stable ABI of Python 3.9+ (one wheel for every version).

mod buffer;
mod errors;
mod executor;
#[cfg(feature = "mpi")]
mod session;

use pyo3::prelude::*;

/// The compiled core of `rfaas`: use the `rfaas` package, which re-exports it.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<executor::PyCluster>()?;
    m.add_class::<executor::PyExecutor>()?;
    m.add_class::<executor::PyPending>()?;
    #[cfg(feature = "mpi")]
    {
        m.add_class::<session::PySession>()?;
        m.add_class::<session::PyOffload>()?;
    }
    m.add("HAS_MPI", cfg!(feature = "mpi"))?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
