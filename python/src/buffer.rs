//! Bytes-like arguments through the buffer protocol, without copying them.
//!
//! PyO3 offers the buffer protocol only where it is part of the limited API (Python 3.11+), but
//! this module is built for the stable ABI of Python 3.9+. `PyObject_GetBuffer`,
//! `PyBuffer_Release` and the layout of `Py_buffer` are the same in every CPython since 3.3
//! (3.11 made them part of the stable ABI unchanged), so they are declared here by hand.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi::{PyObject, Py_ssize_t};
use pyo3::prelude::*;

/// CPython's `Py_buffer` (Include/pybuffer.h, unchanged since 3.3).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut PyObject,
    len: Py_ssize_t,
    itemsize: Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut Py_ssize_t,
    strides: *mut Py_ssize_t,
    suboffsets: *mut Py_ssize_t,
    internal: *mut c_void,
}

/// `PyBUF_SIMPLE`: one contiguous block of bytes, read-only is fine.
const PYBUF_SIMPLE: c_int = 0;
/// `PyBUF_WRITABLE`.
const PYBUF_WRITABLE: c_int = 0x0001;

extern "C" {
    fn PyObject_GetBuffer(obj: *mut PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

/// A contiguous byte view of a Python object (bytes, bytearray, memoryview, NumPy array, ...),
/// held for as long as this value lives: the exporter cannot resize or free the memory
/// meanwhile (a `bytearray` refuses to resize while exported). Released on drop, which needs
/// the GIL: the value borrows `'py`, so it cannot leave the thread holding it.
pub struct Buffer<'py> {
    raw: Box<RawBuffer>,
    _py: PhantomData<Python<'py>>,
}

impl<'py> Buffer<'py> {
    /// A read-only view of `obj`'s bytes. A `TypeError` for objects without the buffer
    /// protocol, a `BufferError` for non-contiguous ones.
    pub fn read(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        Self::get(obj, PYBUF_SIMPLE)
    }

    /// A writable view of `obj`'s bytes (a `BufferError` for read-only objects such as `bytes`).
    pub fn write(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        Self::get(obj, PYBUF_WRITABLE)
    }

    fn get(obj: &Bound<'py, PyAny>, flags: c_int) -> PyResult<Self> {
        let mut raw = Box::new(RawBuffer {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        });
        // SAFETY: `obj` is a live object and we hold the GIL (`Bound<'py>`); `raw` points to a
        // writable `Py_buffer` of the layout CPython expects, which it fills on success.
        let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *raw, flags) };
        if rc != 0 {
            return Err(PyErr::take(obj.py())
                .unwrap_or_else(|| PyBufferError::new_err("the object exports no buffer")));
        }
        if raw.len < 0 || (raw.len > 0 && raw.buf.is_null()) {
            // SAFETY: the buffer was obtained just above and is released exactly once (drop of
            // `Buffer` is not reached: we return before constructing it).
            unsafe { PyBuffer_Release(&mut *raw) };
            return Err(PyBufferError::new_err(
                "the object exported an invalid buffer",
            ));
        }
        Ok(Buffer {
            raw,
            _py: PhantomData,
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.raw.len as usize
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.raw.len == 0 {
            return &[];
        }
        // SAFETY: PyBUF_SIMPLE/WRITABLE requests a contiguous block: `buf` points to `len`
        // bytes (checked non-null and non-negative in `get`), valid while the export is held,
        // i.e. while `self` lives.
        unsafe { std::slice::from_raw_parts(self.raw.buf as *const u8, self.raw.len as usize) }
    }

    /// The bytes, writable: only for a view from [`Buffer::write`].
    pub fn as_mut_slice(&mut self) -> PyResult<&mut [u8]> {
        if self.raw.readonly != 0 {
            return Err(PyBufferError::new_err("the buffer is read-only"));
        }
        if self.raw.len == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as in `as_slice`, and the exporter granted a writable view (checked above);
        // `&mut self` makes this the only slice of it in Rust.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(self.raw.buf as *mut u8, self.raw.len as usize)
        })
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful `PyObject_GetBuffer` and is released once;
        // `Buffer<'py>` cannot outlive the GIL token it was made with.
        unsafe { PyBuffer_Release(&mut *self.raw) };
    }
}
