//! Input image to model tensor: the classifier's documented preprocessing.
//!
//! 1. Decode the JPEG or PNG (at most [`MAX_DIMENSION`] pixels a side and [`MAX_DECODE_ALLOC`]
//!    bytes, checked from the header before decoding).
//! 2. Convert to 8-bit RGB; resize to exactly the model's input height × width with a bilinear
//!    (triangle) filter, ignoring the aspect ratio. An image already at that size is used as is.
//! 3. Scale each channel to [0, 1] (`v / 255`), then normalize with the ImageNet mean
//!    (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225), per channel R, G, B.
//! 4. Lay out as `f32` NCHW, batch 1: `[1, 3, height, width]`.
//!
//! This is what ResNet-50 and the other ImageNet models of the ONNX model zoo expect (their
//! reference preprocessing resizes the short side to 256 and crops 224; this one resizes the
//! whole image, so scores on non-square images differ slightly from the zoo's).

use image::RgbImage;
use rfaas_function::app_status::AppError;

/// The largest image width or height the classifier decodes.
pub const MAX_DIMENSION: u32 = 12_000;

/// The most memory one decode may allocate (bytes).
pub const MAX_DECODE_ALLOC: u64 = 256 << 20;

/// Per-channel (R, G, B) mean of the normalization.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];

/// Per-channel (R, G, B) standard deviation of the normalization.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Step 1: decodes a JPEG or PNG with the limits above ([`rfaas_image::decode`]: a truncated
/// file or one declaring too many pixels is an error status) into RGB.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, AppError> {
    let limits = rfaas_image::Limits {
        max_side: MAX_DIMENSION,
        max_alloc: MAX_DECODE_ALLOC,
    };
    Ok(rfaas_image::decode(bytes, limits)?.to_rgb8())
}

/// Steps 2 to 4: the NCHW `f32` values (`3 * height * width` of them) for a model input of
/// `height`×`width`.
pub fn to_tensor_data(img: &RgbImage, height: u32, width: u32) -> Vec<f32> {
    let resized;
    let img = if img.dimensions() == (width, height) {
        img
    } else {
        resized =
            image::imageops::resize(img, width, height, image::imageops::FilterType::Triangle);
        &resized
    };
    let plane = (height * width) as usize;
    let mut data = vec![0f32; 3 * plane];
    for (x, y, p) in img.enumerate_pixels() {
        let i = (y * width + x) as usize;
        for c in 0..3 {
            data[c * plane + i] = (f32::from(p.0[c]) / 255.0 - MEAN[c]) / STD[c];
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_by_hand() {
        // A 2x1 image: (255, 0, 128) and (0, 255, 51).
        let img = RgbImage::from_raw(2, 1, vec![255, 0, 128, 0, 255, 51]).unwrap();
        let d = to_tensor_data(&img, 1, 2);
        let expect = |v: f32, c: usize| (v / 255.0 - MEAN[c]) / STD[c];
        let want = [
            expect(255.0, 0),
            expect(0.0, 0),
            expect(0.0, 1),
            expect(255.0, 1),
            expect(128.0, 2),
            expect(51.0, 2),
        ];
        assert_eq!(d, want);
    }

    #[test]
    fn other_sizes_are_resized() {
        let img = RgbImage::from_pixel(10, 6, image::Rgb([255, 255, 255]));
        let d = to_tensor_data(&img, 4, 4);
        assert_eq!(d.len(), 48);
        // A uniform image stays uniform.
        assert!((d[0] - (1.0 - MEAN[0]) / STD[0]).abs() < 1e-6);
    }
}
