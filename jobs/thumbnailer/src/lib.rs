//! # rfaas-thumbnailer — an image thumbnailer as an rfaas function
//!
//! After rFaaS's thumbnailer application: decode a JPEG or PNG, scale it to fit 200×200 (or a
//! box given in a small input header, [`header`]) keeping its aspect ratio, and return the JPEG.
//! Pure-Rust codecs (`image` with JPEG and PNG only).
//!
//! Built as a `cdylib` (`libthumbnailer.so`, the library a client ships to executors) and an
//! `rlib` (clients use [`make_thumbnail`] to do the same work locally, [`generate`] to make
//! test pictures and [`decode_output`] to read results):
//!
//! ```text
//! cargo build -p rfaas-thumbnailer --release     # -> target/release/libthumbnailer.so
//! ```
//!
//! | symbol | input | output |
//! |---|---|---|
//! | `thumbnail` | optional [`header`] (`"RFTH"`, u16 LE width, u16 LE height), then a JPEG or PNG file | [`app_status`] framed: `0` + JPEG bytes, or an error code + message |
//!
//! ## Errors
//!
//! The output starts with a one-byte application status ([`rfaas_function::app_status`]): `0`
//! then the thumbnail, or a non-zero code then a UTF-8 message. Input that is not a JPEG or PNG
//! or does not decode (a truncated file) is `BadInput`; an image declaring more than
//! [`MAX_DIMENSION`] pixels a side, or needing more than [`MAX_DECODE_ALLOC`] bytes, is
//! `TooLarge`, refused from its header before any pixel buffer is allocated. None of these
//! panics; the executor keeps serving. A thumbnail larger than the caller's output capacity makes
//! the call fail with rfaas's "output too large" and the length needed.

#![warn(missing_docs)]

pub mod generate;
pub mod header;
mod thumbnail;

pub use header::{with_header, DEFAULT_SIZE};
use rfaas_function::app_status::{self, DecodeError};
pub use thumbnail::{make_thumbnail, JPEG_QUALITY, MAX_DECODE_ALLOC, MAX_DIMENSION};

/// `thumbnail`: the exported function ([`make_thumbnail`], output framed with
/// [`app_status`]).
pub fn thumbnail(input: &[u8], output: &mut [u8]) -> usize {
    app_status::write_result(output, make_thumbnail(input))
}

/// Decodes the output of `thumbnail`: the JPEG bytes, or the function's error.
pub fn decode_output(output: &[u8]) -> Result<&[u8], DecodeError> {
    app_status::decode(output)
}

rfaas_function::export_function!(thumbnail, thumbnail);

#[cfg(test)]
mod tests {
    use super::*;
    use rfaas_function::app_status::AppErrorCode;

    fn call(input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = vec![0u8; 1 << 20];
        let n = thumbnail(input, &mut out);
        assert!(n <= out.len(), "thumbnail of {n} bytes");
        decode_output(&out[..n]).map(<[u8]>::to_vec)
    }

    fn dims(jpeg: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap();
        (img.width(), img.height())
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        generate::encode_png(&generate::picture(1, w, h))
    }

    #[test]
    fn fits_the_box_keeping_the_aspect_ratio() {
        let jpeg = generate::encode_jpeg(&generate::picture(5, 800, 600));
        // 800x600 into 200x200: 200x150 (4:3 kept).
        assert_eq!(dims(&call(&jpeg).unwrap()), (200, 150));
        // 800x600 into 100x300: width-bound, 100x75.
        assert_eq!(
            dims(&call(&with_header(100, 300, &jpeg)).unwrap()),
            (100, 75)
        );
        // PNG in, JPEG out; 300x900 into 200x200: 67x200 (rounded).
        let out = call(&png(300, 900)).unwrap();
        assert_eq!(dims(&out), (67, 200));
        // Smaller than the box: not enlarged.
        assert_eq!(dims(&call(&png(50, 40)).unwrap()), (50, 40));
    }

    #[test]
    fn the_thumbnail_shows_the_picture() {
        // A picture whose left half is black and right half white stays so, roughly.
        let mut img = image::RgbImage::new(400, 400);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb(if x < 200 { [0; 3] } else { [255; 3] });
        }
        let out = call(&generate::encode_jpeg(&img)).unwrap();
        let thumb = image::load_from_memory(&out).unwrap().to_rgb8();
        assert_eq!(thumb.dimensions(), (200, 200));
        assert!(thumb.get_pixel(20, 100).0.iter().all(|&v| v < 30));
        assert!(thumb.get_pixel(180, 100).0.iter().all(|&v| v > 225));
    }

    #[test]
    fn bad_input_is_an_error_status() {
        let jpeg = generate::encode_jpeg(&generate::picture(9, 320, 240));
        let cases: Vec<(&str, Vec<u8>, AppErrorCode)> = vec![
            (
                "text",
                b"hello, not an image".to_vec(),
                AppErrorCode::BadInput,
            ),
            ("empty", Vec::new(), AppErrorCode::BadInput),
            (
                "truncated JPEG",
                jpeg[..jpeg.len() / 2].to_vec(),
                AppErrorCode::BadInput,
            ),
            (
                "truncated PNG",
                png(64, 64)[..200].to_vec(),
                AppErrorCode::BadInput,
            ),
            (
                "huge JPEG",
                generate::jpeg_declaring(60_000, 60_000),
                AppErrorCode::TooLarge,
            ),
            (
                "huge PNG",
                generate::png_declaring(100_000, 100_000),
                AppErrorCode::TooLarge,
            ),
            (
                "bad header",
                with_header(0, 0, &jpeg),
                AppErrorCode::BadInput,
            ),
        ];
        for (what, input, code) in cases {
            let err = call(&input).expect_err(what);
            assert_eq!(err.code(), Some(code), "{what}: {err}");
            assert!(!err.to_string().is_empty());
        }
    }
}
