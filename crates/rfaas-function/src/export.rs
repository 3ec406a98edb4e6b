//! [`export_function!`](crate::export_function): export a safe Rust function with the rFaaS ABI.

/// Exports a safe Rust function from a function library under a C symbol name.
///
/// ```text
/// rfaas_function::export_function!(symbol_name, rust_function);  // or rfaas::export_function!
/// ```
///
/// `rust_function` is any function (or closure expression) callable as
/// `fn(input: &mut [u8], output: &mut [u8]) -> usize` or `fn(input: &[u8], output: &mut [u8]) ->
/// usize`:
///
/// * `input` is the invocation's payload (in place in the worker's input slot; a function may
///   reuse it as scratch space when it takes `&mut [u8]`);
/// * `output` is the whole output buffer: its length is the caller's output capacity;
/// * the return value is the number of output bytes written at the start of `output`. Returning
///   more than `output.len()` means "the result does not fit": the caller gets an
///   output-too-large error carrying that length, and nothing is sent. Do not write beyond the
///   slice (you cannot, safely).
///
/// A panic is caught (`std::panic::catch_unwind`) and reported to the caller as a panicked call;
/// the executor keeps serving. This needs the library built with `panic = "unwind"` (the
/// default); with `panic = "abort"` a panic ends the executor process, which the executor
/// manager reports to the client as a crash.
///
/// The macro defines two symbols in the crate that invokes it (which must be built as a
/// `cdylib`, usually `crate-type = ["cdylib", "rlib"]`): `symbol_name` with the plain rFaaS C ABI
/// ([`RawFunction`](crate::abi::RawFunction)), callable by any rFaaS-compatible host, and
/// `__rfaas_ext_v1_symbol_name` with the [`ExtendedFunction`](crate::abi::ExtendedFunction)
/// ABI that carries the output capacity and the panic status; see [`crate::abi`].
/// The symbol name must be unique in the library; the generated items are hidden in an anonymous
/// constant, so the Rust function may have the same name as the symbol.
///
/// # Example
///
/// ```
/// /// Copies the input to the output.
/// pub fn echo(input: &[u8], output: &mut [u8]) -> usize {
///     if let Some(out) = output.get_mut(..input.len()) {
///         out.copy_from_slice(input);
///     }
///     input.len()
/// }
///
/// rfaas_function::export_function!(echo, echo);
/// ```
#[macro_export]
macro_rules! export_function {
    ($name:ident, $func:expr $(,)?) => {
        const _: () = {
            /// Plain rFaaS C ABI entry: the output capacity is taken to be `in_len`.
            #[allow(unsafe_code)]
            #[export_name = ::core::stringify!($name)]
            pub unsafe extern "C" fn __rfaas_plain_entry(
                input: *mut ::core::ffi::c_void,
                in_len: u32,
                output: *mut ::core::ffi::c_void,
            ) -> u32 {
                let mut status = $crate::abi::EXT_STATUS_OK;
                // SAFETY: the plain ABI promises that `input` is valid for `in_len` bytes and
                // `output` for the allocation's output capacity, which rFaaS makes equal to the
                // input capacity, hence at least `in_len` bytes; `status` is a local.
                let len =
                    unsafe { __rfaas_extended_entry(input, in_len, output, in_len, &mut status) };
                if status == $crate::abi::EXT_STATUS_OK {
                    len
                } else {
                    $crate::abi::PLAIN_PANIC_SENTINEL
                }
            }

            /// rfaas extended entry: carries the output capacity and an out-of-band status.
            #[allow(unsafe_code)]
            #[export_name = ::core::concat!("__rfaas_ext_v1_", ::core::stringify!($name))]
            pub unsafe extern "C" fn __rfaas_extended_entry(
                input: *mut ::core::ffi::c_void,
                in_len: u32,
                output: *mut ::core::ffi::c_void,
                out_capacity: u32,
                status: *mut u32,
            ) -> u32 {
                let in_len = in_len as usize;
                let capacity = out_capacity as usize;
                if status.is_null() {
                    return $crate::abi::PLAIN_PANIC_SENTINEL;
                }
                let valid = (in_len == 0 || !input.is_null())
                    && (capacity == 0 || !output.is_null())
                    && !$crate::abi::__overlap(input, in_len, output, capacity);
                if !valid {
                    // SAFETY: `status` is non-null and the ABI makes it valid for one write.
                    unsafe { status.write($crate::abi::EXT_STATUS_PANICKED) };
                    return $crate::abi::PLAIN_PANIC_SENTINEL;
                }
                let input: &mut [u8] = if in_len == 0 {
                    &mut []
                } else {
                    // SAFETY: non-null (checked), valid for `in_len` bytes by the ABI, disjoint
                    // from `output` (checked), and not used by the caller during the call.
                    unsafe { ::core::slice::from_raw_parts_mut(input.cast::<u8>(), in_len) }
                };
                let output: &mut [u8] = if capacity == 0 {
                    &mut []
                } else {
                    // SAFETY: non-null (checked), valid for `out_capacity` bytes by the ABI,
                    // disjoint from `input` (checked), and not used by the caller during the call.
                    unsafe { ::core::slice::from_raw_parts_mut(output.cast::<u8>(), capacity) }
                };
                let (len, word) = match $crate::abi::__invoke(|i, o| ($func)(i, o), input, output) {
                    ::core::result::Result::Ok(len) => (len, $crate::abi::EXT_STATUS_OK),
                    ::core::result::Result::Err(()) => (
                        $crate::abi::PLAIN_PANIC_SENTINEL,
                        $crate::abi::EXT_STATUS_PANICKED,
                    ),
                };
                // SAFETY: `status` is non-null and the ABI makes it valid for one write.
                unsafe { status.write(word) };
                len
            }
        };
    };
}
