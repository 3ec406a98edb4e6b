//! # rfaas-image — untrusted JPEG and PNG input for rfaas functions
//!
//! The applications' functions (`jobs/thumbnailer`, `jobs/classifier`) decode images that come
//! straight off the network. [`decode`] does that safely:
//!
//! * only JPEG and PNG, recognised by their signature (not by what the caller claims);
//! * [`Limits`]: at most `max_side` pixels a side and `max_alloc` bytes, checked from the
//!   image's header **before** its pixels are allocated, so a 100-byte file declaring
//!   100000×100000 is a clear error, not an out-of-memory kill of the executor;
//! * a JPEG must be complete ([`jpeg::is_complete`]): the JPEG decoder fills a cut-off file with
//!   grey and calls it a success, which would turn a truncated upload into a wrong result;
//! * every failure is an [`AppError`] ready for the output's status byte
//!   ([`rfaas_function::app_status`]): `BadInput` for what is not a (whole) image, `TooLarge`
//!   for what exceeds the limits. Nothing panics.

#![warn(missing_docs)]

pub mod jpeg;

use std::io::Cursor;

use image::error::ImageError;
use image::{DynamicImage, ImageFormat, ImageReader};
use rfaas_function::app_status::{AppError, AppErrorCode};

/// What a function accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest width and largest height, pixels.
    pub max_side: u32,
    /// Most bytes one decode may allocate (the decoded pixels included).
    pub max_alloc: u64,
}

impl Default for Limits {
    /// 12000 pixels a side, 256 MiB.
    fn default() -> Self {
        Limits {
            max_side: 12_000,
            max_alloc: 256 << 20,
        }
    }
}

/// Decodes a JPEG or PNG within `limits`.
pub fn decode(bytes: &[u8], limits: Limits) -> Result<DynamicImage, AppError> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        _ => {
            return Err(AppError::new(
                AppErrorCode::BadInput,
                format!("not a JPEG or PNG image ({} bytes)", bytes.len()),
            ))
        }
    };
    let what = if format == ImageFormat::Jpeg {
        "JPEG"
    } else {
        "PNG"
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l.clone());
    // The header is checked first (a huge declared size is "too large" even when the file is
    // also cut short), then completeness, then the pixels.
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| error(what, limits, e))?;
    let (w64, h64) = (u64::from(w), u64::from(h));
    if w > limits.max_side || h > limits.max_side || w64 * h64 * 4 > limits.max_alloc {
        return Err(too_large(what, limits, w, h));
    }
    if format == ImageFormat::Jpeg && !jpeg::is_complete(bytes) {
        return Err(AppError::new(
            AppErrorCode::BadInput,
            format!(
                "truncated JPEG ({w}x{h}, {} bytes): no end-of-image marker after the image data",
                bytes.len()
            ),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(l);
    reader.decode().map_err(|e| error(what, limits, e))
}

fn too_large(what: &str, limits: Limits, w: u32, h: u32) -> AppError {
    AppError::new(
        AppErrorCode::TooLarge,
        format!(
            "{what} image of {w}x{h}: at most {m}x{m} pixels and {a} bytes decoded",
            m = limits.max_side,
            a = limits.max_alloc
        ),
    )
}

fn error(what: &str, limits: Limits, e: ImageError) -> AppError {
    match e {
        ImageError::Limits(l) => AppError::new(
            AppErrorCode::TooLarge,
            format!(
                "{what} image beyond {m}x{m} pixels or {a} bytes decoded: {l}",
                m = limits.max_side,
                a = limits.max_alloc
            ),
        ),
        e => AppError::new(
            AppErrorCode::BadInput,
            format!("{what} does not decode: {e}"),
        ),
    }
}
