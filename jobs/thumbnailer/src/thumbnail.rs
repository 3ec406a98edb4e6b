//! Decode, resize, encode: the thumbnailer's work, the same remotely and locally.

use image::codecs::jpeg::JpegEncoder;
use rfaas_function::app_status::{AppError, AppErrorCode};

use crate::header;

/// The largest image width or height the thumbnailer decodes.
pub const MAX_DIMENSION: u32 = 12_000;

/// The most memory one decode may allocate (bytes), the decoded pixels included.
pub const MAX_DECODE_ALLOC: u64 = 256 << 20;

/// Quality of the thumbnails' JPEG encoding (1..=100).
pub const JPEG_QUALITY: u8 = 85;

/// Makes the thumbnail of one input (optional [`header`], then a JPEG or PNG file): the image
/// scaled to fit the requested box (200×200 without a header) **keeping its aspect ratio**
/// (Lanczos3; an image already smaller than the box is not enlarged), as an RGB JPEG of quality
/// [`JPEG_QUALITY`].
///
/// Errors ([`rfaas_image::decode`]): [`AppErrorCode::BadInput`] for input that is not a JPEG or
/// PNG or does not decode (a truncated file included); [`AppErrorCode::TooLarge`] for an image
/// declaring more than [`MAX_DIMENSION`] pixels a side or needing more than
/// [`MAX_DECODE_ALLOC`] bytes, refused before its pixels are allocated.
pub fn make_thumbnail(input: &[u8]) -> Result<Vec<u8>, AppError> {
    let ((bw, bh), bytes) = header::parse(input)?;
    let limits = rfaas_image::Limits {
        max_side: MAX_DIMENSION,
        max_alloc: MAX_DECODE_ALLOC,
    };
    let img = rfaas_image::decode(bytes, limits)?;
    let img = if img.width() <= bw && img.height() <= bh {
        img
    } else {
        img.resize(bw, bh, image::imageops::FilterType::Lanczos3)
    };
    let rgb = img.to_rgb8();
    let mut out = Vec::with_capacity(16 << 10);
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode_image(&rgb)
        .map_err(|e| AppError::new(AppErrorCode::Internal, format!("JPEG encoding: {e}")))?;
    Ok(out)
}
