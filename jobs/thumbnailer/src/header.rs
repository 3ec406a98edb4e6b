//! The optional input header: the thumbnail's size.
//!
//! ```text
//! [b"RFTH"][width: u16 LE][height: u16 LE][image bytes ...]   (8-byte header)
//! [image bytes ...]                                            (no header: 200×200)
//! ```
//!
//! JPEG files start with `FF D8` and PNG files with `89 50 4E 47`, so an input that starts with
//! the magic is never an image without a header.

use rfaas_function::app_status::{AppError, AppErrorCode};

/// The header's first four bytes.
pub const MAGIC: [u8; 4] = *b"RFTH";

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// The thumbnail's bounding box without a header.
pub const DEFAULT_SIZE: (u32, u32) = (200, 200);

/// The largest thumbnail side a header may ask for.
pub const MAX_SIDE: u32 = 4096;

/// Prepends the header asking for a `width`×`height` box to `image`.
pub fn with_header(width: u16, height: u16, image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + image.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(image);
    out
}

/// Splits an input into the requested box and the image bytes. A header with a zero side or one
/// above [`MAX_SIDE`] is bad input, as is an input shorter than a header that starts with the
/// magic.
pub fn parse(input: &[u8]) -> Result<((u32, u32), &[u8]), AppError> {
    if !input.starts_with(&MAGIC) {
        return Ok((DEFAULT_SIZE, input));
    }
    let Some((head, image)) = input.split_first_chunk::<HEADER_LEN>() else {
        return Err(AppError::new(
            AppErrorCode::BadInput,
            format!(
                "thumbnail header truncated: {} of {HEADER_LEN} bytes",
                input.len()
            ),
        ));
    };
    let w = u32::from(u16::from_le_bytes([head[4], head[5]]));
    let h = u32::from(u16::from_le_bytes([head[6], head[7]]));
    if !(1..=MAX_SIDE).contains(&w) || !(1..=MAX_SIDE).contains(&h) {
        return Err(AppError::new(
            AppErrorCode::BadInput,
            format!("thumbnail size {w}x{h}: each side must be 1..={MAX_SIDE}"),
        ));
    }
    Ok(((w, h), image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_default() {
        let input = with_header(64, 48, b"\xff\xd8rest");
        assert_eq!(parse(&input).unwrap(), ((64, 48), &b"\xff\xd8rest"[..]));
        assert_eq!(
            parse(b"\xff\xd8x").unwrap(),
            ((200, 200), &b"\xff\xd8x"[..])
        );
    }

    #[test]
    fn bad_headers_are_bad_input() {
        for input in [
            &b"RFTH\x01"[..],
            &with_header(0, 10, b"x"),
            &with_header(5000, 10, b"x"),
        ] {
            assert_eq!(parse(input).unwrap_err().code(), AppErrorCode::BadInput);
        }
    }
}
