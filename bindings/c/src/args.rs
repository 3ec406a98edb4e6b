//! Checked conversions of C arguments: strings, byte buffers, output pointers.

use std::ffi::{c_char, c_void, CStr};

use crate::error::Error;

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p`, when not NULL, must point to a NUL-terminated string that lives for `'a`.
pub unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string alive for 'a.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| Error::invalid(format!("{what} is not UTF-8")))
}

/// An optional string argument (NULL: `None`).
///
/// # Safety
/// As [`str_arg`].
pub unsafe fn opt_str_arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { str_arg(p, what) }.map(Some)
    }
}

/// An input buffer `(p, len)`; NULL is allowed only with `len == 0`.
///
/// # Safety
/// `p`, when not NULL, must point to `len` readable bytes that live for `'a`.
pub unsafe fn in_buf<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Error::null(&format!("{what} (with length {len})")))
        };
    }
    if len > isize::MAX as usize {
        return Err(Error::invalid(format!("{what}: length {len} is too large")));
    }
    // SAFETY: not NULL, and the caller promises `len` readable bytes alive for 'a.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An output buffer `(p, capacity)`; NULL is allowed only with `capacity == 0`.
///
/// # Safety
/// `p`, when not NULL, must point to `capacity` writable bytes, not aliased, that live for `'a`.
pub unsafe fn out_buf<'a>(p: *mut u8, capacity: usize, what: &str) -> Result<&'a mut [u8], Error> {
    if p.is_null() {
        return if capacity == 0 {
            Ok(&mut [])
        } else {
            Err(Error::null(&format!("{what} (with capacity {capacity})")))
        };
    }
    if capacity > isize::MAX as usize {
        return Err(Error::invalid(format!(
            "{what}: capacity {capacity} is too large"
        )));
    }
    // SAFETY: not NULL, and the caller promises `capacity` writable, unaliased bytes.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, capacity) })
}

/// Writes `v` through an out-pointer that may be NULL (then nothing is written).
///
/// # Safety
/// `p`, when not NULL, must be valid for a write of `T`.
pub unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: not NULL, and valid for a write by the caller's contract.
        unsafe { p.write(v) };
    }
}

/// Lends the caller's output buffer `(output, capacity)` to `call`, which returns how many bytes
/// of it the result took; that length goes to `*output_len` (NULL: nowhere).
///
/// # Safety
/// As [`out_buf`] for `output` and `capacity`; `output_len` NULL or valid for a write.
pub unsafe fn answer(
    output: *mut c_void,
    capacity: usize,
    output_len: *mut usize,
    call: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
) -> Result<(), Error> {
    // SAFETY: the caller's contract on `output` and `capacity`.
    let out = unsafe { out_buf(output.cast(), capacity, "output") }?;
    let n = call(out)?;
    // SAFETY: NULL or valid for a write, by the caller's contract.
    unsafe { put(output_len, n) };
    Ok(())
}

/// Collects a posted call: takes back its handle `pending` (consumed whatever the outcome),
/// then finds the handle's owner with `owner` and lends the caller's output buffer to `wait`, as
/// [`answer`] does.
///
/// # Safety
/// As [`take_handle`] for `pending`, as [`answer`] for the output arguments.
pub unsafe fn collect<P, O>(
    pending: *mut P,
    what: &str,
    owner: impl FnOnce() -> Result<O, Error>,
    (output, capacity, output_len): (*mut c_void, usize, *mut usize),
    wait: impl FnOnce(O, P, &mut [u8]) -> Result<usize, Error>,
) -> Result<(), Error> {
    // SAFETY: the caller's contract on `pending`.
    let p = unsafe { take_handle(pending, what) }?;
    let o = owner()?;
    // SAFETY: the caller's contract on the output arguments.
    unsafe { answer(output, capacity, output_len, |out| wait(o, p, out)) }
}

/// Hands `handle` to the caller through the out-pointer `out`, boxed: the caller gives it back
/// to [`take_handle`] or to the API's function that frees it.
///
/// # Safety
/// `out` not NULL and valid for a write.
pub unsafe fn give_handle<T>(out: *mut *mut T, handle: T) {
    // SAFETY: the caller's contract.
    unsafe { out.write(Box::into_raw(Box::new(handle))) };
}

/// Takes back a handle made by `Box::into_raw` (a pending call), which the caller gives up.
///
/// # Safety
/// `p` NULL or from `Box::into_raw`, not taken back yet.
pub unsafe fn take_handle<T>(p: *mut T, what: &str) -> Result<T, Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: from Box::into_raw and taken back once, by the caller's contract.
    Ok(*unsafe { Box::from_raw(p) })
}

/// A required out-pointer.
pub fn need<T>(p: *mut T, what: &str) -> Result<*mut T, Error> {
    if p.is_null() {
        Err(Error::null(what))
    } else {
        Ok(p)
    }
}

/// Splits a comma-separated list of function names (spaces around names are ignored).
pub fn function_names(list: &str) -> Result<Vec<String>, Error> {
    let names: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Err(Error::invalid(
            "functions: give at least one function name (comma-separated)",
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_and_trimmed() {
        assert_eq!(
            function_names(" echo, empty ,,black_scholes").unwrap(),
            vec!["echo", "empty", "black_scholes"]
        );
        assert!(function_names(" , ").is_err());
    }
}
