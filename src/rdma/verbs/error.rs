//! Turning the error conventions of libibverbs and librdmacm into [`FabricError`]s.
//!
//! The C libraries use three conventions, and every call site says which one applies:
//!
//! * `rdma_*` calls return `-1` and set `errno` ([`errno`] reads it);
//! * most `ibv_*` calls that do not create objects return the error number itself
//!   ([`check_ret`]);
//! * constructors return `NULL` and set `errno` ([`last_os_error`]).

use std::io;

use crate::rdma::error::FabricError;

/// Provider name used in errors.
pub(crate) const PROVIDER: &str = "verbs";

/// `errno` right after a failed call, as an [`io::Error`].
pub(crate) fn last_os_error() -> io::Error {
    io::Error::last_os_error()
}

/// An [`FabricError::Io`] for `what` from the current `errno`.
pub(crate) fn errno(what: &str) -> FabricError {
    FabricError::io(what, last_os_error())
}

/// For calls that return an error number (positive, or negated by some providers) on failure.
pub(crate) fn check_ret(ret: libc::c_int, what: &str) -> crate::rdma::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(FabricError::io(
            what,
            io::Error::from_raw_os_error(ret.abs()),
        ))
    }
}

/// The "no device" error every entry point reports on a machine without RDMA hardware.
pub(crate) fn no_device(call: &str, detail: impl std::fmt::Display) -> FabricError {
    FabricError::Unavailable {
        provider: PROVIDER,
        reason: format!("no RDMA device found ({call}: {detail})"),
    }
}

/// True for the error numbers librdmacm and libibverbs use to say that there is no device or no
/// kernel support at all.
pub(crate) fn means_no_device(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::ENOSYS | libc::ENXIO | libc::ENOENT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ret_conventions() {
        assert!(check_ret(0, "x").is_ok());
        let e = check_ret(libc::ENOMEM, "ibv_post_send").unwrap_err();
        assert!(e.to_string().contains("ibv_post_send"), "{e}");
        let e = check_ret(-libc::EINVAL, "ibv_modify_qp").unwrap_err();
        match e {
            FabricError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EINVAL)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn no_device_message() {
        let e = no_device(
            "ibv_get_device_list",
            io::Error::from_raw_os_error(libc::ENOSYS),
        );
        let s = e.to_string();
        assert!(
            s.contains("verbs") && s.contains("no RDMA device found"),
            "{s}"
        );
        assert!(means_no_device(&io::Error::from_raw_os_error(libc::ENODEV)));
        assert!(!means_no_device(&io::Error::from_raw_os_error(
            libc::EINVAL
        )));
    }
}
