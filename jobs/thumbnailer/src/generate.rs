//! Synthetic photo-like test images (nothing can be downloaded where the tests run).
//!
//! A picture is a smooth two-colour gradient (sky to ground), a few soft-edged discs and some
//! grain: smooth areas and detail as in a photograph, so that JPEG sizes and decode times
//! behave like those of real photos. Deterministic for a given seed.

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};

/// Quality of the generated JPEGs.
pub const GENERATED_QUALITY: u8 = 90;

/// A small deterministic generator (xorshift64*); not for anything but test pictures.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A `width`×`height` photo-like picture from `seed`.
pub fn picture(seed: u64, width: u32, height: u32) -> RgbImage {
    let mut rng = Rng::new(seed);
    let colour = |rng: &mut Rng| [rng.unit() * 255.0, rng.unit() * 255.0, rng.unit() * 255.0];
    let (top, bottom) = (colour(&mut rng), colour(&mut rng));
    // (colour, centre x, centre y, radius)
    let discs: Vec<([f32; 3], f32, f32, f32)> = (0..6)
        .map(|_| {
            let c = colour(&mut rng);
            let (x, y) = (rng.unit() * width as f32, rng.unit() * height as f32);
            let r = (0.05 + 0.2 * rng.unit()) * width.min(height) as f32;
            (c, x, y, r.max(1.0))
        })
        .collect();
    let mut img = RgbImage::new(width, height);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let t = y as f32 / height.max(1) as f32;
        let mut c = [0f32; 3];
        for k in 0..3 {
            c[k] = top[k] * (1.0 - t) + bottom[k] * t;
        }
        for (dc, dx, dy, r) in &discs {
            let d = ((x as f32 - dx).powi(2) + (y as f32 - dy).powi(2)).sqrt();
            // Soft edge over 10% of the radius.
            let a = ((r - d) / (0.1 * r)).clamp(0.0, 1.0);
            for k in 0..3 {
                c[k] = c[k] * (1.0 - a) + dc[k] * a;
            }
        }
        let grain = (rng.unit() - 0.5) * 24.0;
        *px = Rgb(c.map(|v| (v + grain).clamp(0.0, 255.0) as u8));
    }
    img
}

/// Encodes `img` as a JPEG of quality [`GENERATED_QUALITY`].
pub fn encode_jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, GENERATED_QUALITY)
        .encode_image(img)
        .expect("encoding an RGB image into memory does not fail");
    out
}

/// Encodes `img` as a PNG.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding an RGB image into memory does not fail");
    out.into_inner()
}

/// Bad input for tests: a small valid baseline JPEG whose frame header (SOF0) is patched to
/// declare `width`×`height`.
pub fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = encode_jpeg(&picture(2, 16, 16));
    let sof = jpeg
        .windows(2)
        .position(|m| m == [0xff, 0xc0])
        .expect("the encoder writes a baseline SOF0 marker");
    // FF C0, length (2), precision (1), height (2), width (2)
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// Bad input for tests: a small valid PNG whose header chunk (IHDR, its CRC fixed up) declares
/// `width`×`height`.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = encode_png(&picture(2, 16, 16));
    // signature (8), length (4), "IHDR" (4), width (4), height (4), 5 more bytes, CRC (4)
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A photo-like JPEG from `seed` of about `target_bytes` (within 15% when the target is at least
/// a few KB): the picture's size (4:3) is adjusted over a few encodings.
pub fn jpeg_of_size(seed: u64, target_bytes: usize) -> Vec<u8> {
    let target = target_bytes.max(1024) as f64;
    // About 0.3 bytes per pixel at quality 90 with this grain (a 100 KB picture is about
    // 630x470, like a photo on the web): a first guess, then corrected.
    let mut pixels = target / 0.3;
    let mut best = Vec::new();
    for _ in 0..5 {
        let w = ((pixels * 4.0 / 3.0).sqrt().round() as u32).clamp(16, 8192);
        let h = (w * 3 / 4).max(12);
        let jpeg = encode_jpeg(&picture(seed, w, h));
        let ratio = target / jpeg.len() as f64;
        best = jpeg;
        if (ratio - 1.0).abs() < 0.05 {
            break;
        }
        pixels = f64::from(w) * f64::from(h) * ratio;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_close_to_the_size_asked() {
        assert_eq!(picture(7, 40, 30), picture(7, 40, 30));
        assert_ne!(picture(7, 40, 30), picture(8, 40, 30));
        let jpeg = jpeg_of_size(3, 100_000);
        let ratio = jpeg.len() as f64 / 100_000.0;
        assert!((0.85..1.15).contains(&ratio), "{} bytes", jpeg.len());
        assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    }
}
