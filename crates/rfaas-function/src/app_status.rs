//! Application status framing: a one-byte status at the start of a function's output.
//!
//! The rFaaS ABI lets a function say only two things besides its result: "the output does not
//! fit" (a returned length above the capacity) and, with [`export_function!`](crate::export_function),
//! "it panicked". A function that can fail on bad input (an image that is not an image, a model
//! that is not a model) needs a third: "your input was wrong, and here is why". Functions that
//! opt in frame their output as
//!
//! ```text
//! ok:     [0u8][payload ...]
//! error:  [code: u8, 1..=255][UTF-8 message ...]
//! ```
//!
//! The invocation itself succeeds either way (status Ok at the rfaas level): the executor keeps
//! serving, and the client decodes the first byte with [`decode`] into the payload or a typed
//! [`AppError`]. An error message is cut (at a character boundary) to fit the caller's output
//! capacity, so an error never turns into "output too large"; an ok payload that does not fit
//! makes the function return the length it needs, as any rfaas function does.
//!
//! The codes of [`AppErrorCode`] are the ones the project's applications use; other codes
//! (up to 255) are the library's own, and [`decode`] keeps them as [`AppErrorCode::Other`].
//!
//! ```
//! use rfaas_function::app_status::{self, AppError, AppErrorCode};
//!
//! /// Parses a decimal number and returns it doubled, as text.
//! fn double(input: &[u8], output: &mut [u8]) -> usize {
//!     let parsed = std::str::from_utf8(input)
//!         .ok()
//!         .and_then(|s| s.trim().parse::<i64>().ok())
//!         .ok_or_else(|| AppError::new(AppErrorCode::BadInput, "not a decimal number"));
//!     app_status::write_result(output, parsed.map(|n| (2 * n).to_string().into_bytes()))
//! }
//!
//! let mut out = [0u8; 64];
//! let n = double(b"21", &mut out);
//! assert_eq!(app_status::decode(&out[..n]).unwrap(), b"42");
//! let n = double(b"forty", &mut out);
//! let err = app_status::decode(&out[..n]).unwrap_err();
//! assert_eq!(err.code(), Some(AppErrorCode::BadInput));
//! assert_eq!(err.to_string(), "bad input: not a decimal number");
//! ```

use std::fmt;

/// The status byte of a successful call: the payload follows.
pub const STATUS_OK: u8 = 0;

/// Why a framed call failed: the status byte (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppErrorCode {
    /// 1: the input is malformed (not an image, truncated data, a bad header).
    BadInput,
    /// 2: the input declares more than the function accepts (dimensions, a size).
    TooLarge,
    /// 3: the function is not ready (its init did not run or did not load its state).
    NotReady,
    /// 4: the function's own state or dependency failed (a model that cannot run this input).
    Internal,
    /// Any other non-zero code, the library's own.
    Other(u8),
}

impl AppErrorCode {
    /// The status byte.
    pub fn byte(self) -> u8 {
        match self {
            AppErrorCode::BadInput => 1,
            AppErrorCode::TooLarge => 2,
            AppErrorCode::NotReady => 3,
            AppErrorCode::Internal => 4,
            AppErrorCode::Other(b) => b,
        }
    }

    /// The code of a status byte; `None` for [`STATUS_OK`].
    pub fn from_byte(b: u8) -> Option<AppErrorCode> {
        Some(match b {
            STATUS_OK => return None,
            1 => AppErrorCode::BadInput,
            2 => AppErrorCode::TooLarge,
            3 => AppErrorCode::NotReady,
            4 => AppErrorCode::Internal,
            other => AppErrorCode::Other(other),
        })
    }
}

impl fmt::Display for AppErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppErrorCode::BadInput => f.write_str("bad input"),
            AppErrorCode::TooLarge => f.write_str("input too large"),
            AppErrorCode::NotReady => f.write_str("function not ready"),
            AppErrorCode::Internal => f.write_str("function failed"),
            AppErrorCode::Other(b) => write!(f, "application error {b}"),
        }
    }
}

/// An application error: a code and a message, as a framed output carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    code: AppErrorCode,
    message: String,
}

impl AppError {
    /// An error with `code` and `message`. A code of `Other(0)` is not an error status; it is
    /// written as [`AppErrorCode::Internal`].
    pub fn new(code: AppErrorCode, message: impl Into<String>) -> AppError {
        let code = if code.byte() == STATUS_OK {
            AppErrorCode::Internal
        } else {
            code
        };
        AppError {
            code,
            message: message.into(),
        }
    }

    /// The code.
    pub fn code(&self) -> AppErrorCode {
        self.code
    }

    /// The message (possibly cut to fit the caller's output capacity).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for AppError {}

/// Why a framed output could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The output is empty: not a framed output (the function wrote nothing).
    Empty,
    /// The function reported an error.
    App(AppError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty output: no application status byte"),
            DecodeError::App(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<AppError> for DecodeError {
    fn from(e: AppError) -> Self {
        DecodeError::App(e)
    }
}

impl DecodeError {
    /// The application error's code, if the function reported one.
    pub fn code(&self) -> Option<AppErrorCode> {
        match self {
            DecodeError::Empty => None,
            DecodeError::App(e) => Some(e.code()),
        }
    }
}

/// Writes `[0][payload]` into `output` and returns its length, `payload.len() + 1`. When that
/// does not fit, writes nothing and returns the length anyway (the caller gets "output too
/// large" with the length it would need).
pub fn write_ok(output: &mut [u8], payload: &[u8]) -> usize {
    let len = payload.len() + 1;
    if let Some(out) = output.get_mut(..len) {
        out[0] = STATUS_OK;
        out[1..].copy_from_slice(payload);
    }
    len
}

/// Writes `[code][message]` into `output`, the message cut at a character boundary to fit, and
/// returns the length written (0 only when `output` is empty).
pub fn write_error(output: &mut [u8], error: &AppError) -> usize {
    let Some((first, rest)) = output.split_first_mut() else {
        return 0;
    };
    *first = error.code.byte();
    let message = error.message.as_str();
    let mut end = message.len().min(rest.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    rest[..end].copy_from_slice(&message.as_bytes()[..end]);
    end + 1
}

/// [`write_ok`] for `Ok`, [`write_error`] for `Err`.
pub fn write_result<P: AsRef<[u8]>>(output: &mut [u8], result: Result<P, AppError>) -> usize {
    match result {
        Ok(payload) => write_ok(output, payload.as_ref()),
        Err(e) => write_error(output, &e),
    }
}

/// Decodes a framed output: the payload after a [`STATUS_OK`] byte, or the application error.
/// A message that is not valid UTF-8 is decoded lossily.
pub fn decode(output: &[u8]) -> Result<&[u8], DecodeError> {
    let (&status, rest) = output.split_first().ok_or(DecodeError::Empty)?;
    match AppErrorCode::from_byte(status) {
        None => Ok(rest),
        Some(code) => Err(DecodeError::App(AppError {
            code,
            message: String::from_utf8_lossy(rest).into_owned(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_round_trip_and_too_large() {
        let mut out = [0xaau8; 8];
        assert_eq!(write_ok(&mut out, b"abc"), 4);
        assert_eq!(&out[..4], &[0, b'a', b'b', b'c']);
        assert_eq!(decode(&out[..4]).unwrap(), b"abc");
        // Does not fit: nothing written, the needed length returned.
        let mut small = [0xaau8; 3];
        assert_eq!(write_ok(&mut small, b"abc"), 4);
        assert_eq!(small, [0xaa; 3]);
        // An empty payload is a valid ok.
        assert_eq!(write_ok(&mut out, b""), 1);
        assert_eq!(decode(&out[..1]).unwrap(), b"");
    }

    #[test]
    fn error_is_cut_to_fit_at_a_char_boundary() {
        let e = AppError::new(AppErrorCode::BadInput, "aé!");
        let mut out = [0u8; 3]; // status + 2 bytes: 'a' fits, 'é' (2 bytes) does not
        assert_eq!(write_error(&mut out, &e), 2);
        assert_eq!(out[..2], [1, b'a']);
        let got = decode(&out[..2]).unwrap_err();
        assert_eq!(got.code(), Some(AppErrorCode::BadInput));
        assert_eq!(got.to_string(), "bad input: a");
        assert_eq!(write_error(&mut [], &e), 0);
    }

    #[test]
    fn codes_round_trip_and_zero_is_never_an_error() {
        for b in 1..=255u8 {
            assert_eq!(AppErrorCode::from_byte(b).unwrap().byte(), b);
        }
        assert_eq!(AppErrorCode::from_byte(0), None);
        let e = AppError::new(AppErrorCode::Other(0), "x");
        assert_eq!(e.code(), AppErrorCode::Internal);
        let mut out = [0u8; 8];
        let n = write_error(&mut out, &AppError::new(AppErrorCode::Other(200), "mine"));
        let got = decode(&out[..n]).unwrap_err();
        assert_eq!(got.code(), Some(AppErrorCode::Other(200)));
        assert_eq!(got.to_string(), "application error 200: mine");
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }
}
