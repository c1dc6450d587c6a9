//! 8-bit RGB images from decoder output, grids and nearest upscaling for previews, and PNG files
//! written atomically (a temporary file renamed into place, so a failure never leaves a partial file).

use std::path::Path;

use crate::error::{Error, Result};
use crate::output::write_atomic;

/// The most RGB bytes [`Image::grid`] and [`Image::upscale_nearest`] produce (2 GiB, a 26754 x 26754
/// image): both size their output from caller values (a factor, the cells' sides), and a count that
/// fits usize may still be terabytes, which would abort in the allocator rather than return an error.
pub const MAX_IMAGE_BYTES: usize = 1 << 31;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB, 3 bytes per pixel.
    pub rgb: Vec<u8>,
}

impl Image {
    /// Images from decoder output (B, 3, H, W) in the model's [-1, 1] range: clamped, mapped to
    /// [0, 1] as (x + 1) / 2, then to 0..=255 with rounding. `data` must hold exactly B x 3 x H x W
    /// values.
    pub fn from_decoder_output(data: &[f32], batch: usize, height: usize, width: usize) -> Result<Vec<Image>> {
        let plane = height.checked_mul(width);
        let values = plane.and_then(|p| p.checked_mul(3)).and_then(|n| n.checked_mul(batch));
        let (Some(plane), Some(values)) = (plane, values) else {
            return Err(invalid("Image::from_decoder_output", format!("{batch} x 3 x {height} x {width} overflows")));
        };
        if data.len() != values {
            return Err(invalid(
                "Image::from_decoder_output",
                format!("{batch} images of 3 x {height} x {width} need {values} values, got {}", data.len()),
            ));
        }
        let images = (0..batch)
            .map(|b| {
                let mut rgb = vec![0u8; plane * 3];
                for c in 0..3 {
                    let src = &data[(b * 3 + c) * plane..(b * 3 + c + 1) * plane];
                    for (i, &v) in src.iter().enumerate() {
                        rgb[i * 3 + c] = to_byte(v);
                    }
                }
                Image { width, height, rgb }
            })
            .collect();
        Ok(images)
    }

    /// An error naming `op` unless `rgb` holds exactly `width` x `height` pixels (the fields are
    /// public, so an image may have been put together by hand).
    fn check(&self, op: &'static str) -> Result<()> {
        let bytes = self.width.checked_mul(self.height).and_then(|n| n.checked_mul(3));
        if bytes != Some(self.rgb.len()) {
            return Err(invalid(
                op,
                format!(
                    "a {} x {} image holds {} bytes of RGB, not 3 per pixel",
                    self.width,
                    self.height,
                    self.rgb.len()
                ),
            ));
        }
        Ok(())
    }

    /// The images in a grid as close to square as they fill: ceil(sqrt(n)) columns.
    pub fn square_grid(images: &[Image]) -> Result<Image> {
        Self::grid(images, (images.len() as f64).sqrt().ceil() as usize)
    }

    /// The images in a grid of `columns` (the last row may be short), 2 black pixels between; each
    /// cell is the first image's size (a larger image is cropped, a smaller one padded with black).
    /// Cells without pixels and grids above [`MAX_IMAGE_BYTES`] are refused.
    pub fn grid(images: &[Image], columns: usize) -> Result<Image> {
        const OP: &str = "Image::grid";
        for image in images {
            image.check(OP)?;
        }
        let Some(first) = images.first() else { return Ok(Image { width: 0, height: 0, rgb: Vec::new() }) };
        if images.len() == 1 {
            return Ok(first.clone());
        }
        const GAP: usize = 2;
        let columns = columns.clamp(1, images.len());
        let rows = images.len().div_ceil(columns);
        let (w, h) = (first.width, first.height);
        // Empty cells would leave a grid of nothing but the black gaps, whose size no image bounds.
        if w == 0 || h == 0 {
            return Err(invalid(OP, format!("the cells are {w} x {h}: a grid needs images with pixels")));
        }
        // Each image is checked, so w x h x 3 fits; the grid's sides and bytes may not.
        let side = |cells: usize, cell: usize| cell.checked_add(GAP)?.checked_mul(cells)?.checked_sub(GAP);
        let (Some(width), Some(height)) = (side(columns, w), side(rows, h)) else {
            return Err(invalid(OP, format!("{} images of {w} x {h} overflow a grid", images.len())));
        };
        let bytes = output_bytes(OP, width, height)?;
        let mut rgb = allocate(OP, bytes)?;
        rgb.resize(bytes, 0);
        for (i, image) in images.iter().enumerate() {
            let (x0, y0) = ((i % columns) * (w + GAP), (i / columns) * (h + GAP));
            for y in 0..h.min(image.height) {
                let src = &image.rgb[y * image.width * 3..(y * image.width + w.min(image.width)) * 3];
                let start = ((y0 + y) * width + x0) * 3;
                rgb[start..start + src.len()].copy_from_slice(src);
            }
        }
        Ok(Image { width, height, rgb })
    }

    /// Every pixel repeated `factor` times along both axes (no smoothing: coarse tokens stay visible).
    /// Outputs above [`MAX_IMAGE_BYTES`] are refused.
    pub fn upscale_nearest(&self, factor: usize) -> Result<Image> {
        const OP: &str = "Image::upscale_nearest";
        self.check(OP)?;
        let factor = factor.max(1);
        let Some((width, height)) = self.width.checked_mul(factor).zip(self.height.checked_mul(factor)) else {
            return Err(invalid(OP, format!("{} x {} upscaled {factor} times overflows", self.width, self.height)));
        };
        let mut rgb = allocate(OP, output_bytes(OP, width, height)?)?;
        for y in 0..height {
            for x in 0..width {
                let i = ((y / factor) * self.width + x / factor) * 3;
                rgb.extend_from_slice(&self.rgb[i..i + 3]);
            }
        }
        Ok(Image { width, height, rgb })
    }

    /// PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let fail = |e: png::EncodingError| Error::Output { path: "<png>".into(), reason: e.to_string() };
        {
            let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(fail)?;
            writer.write_image_data(&self.rgb).map_err(fail)?;
        }
        Ok(bytes)
    }

    /// Writes a PNG atomically.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_png().map_err(|e| Error::Output { path: path.to_path_buf(), reason: e.to_string() })?;
        write_atomic(path, &bytes)
    }
}

/// The RGB bytes of a `width` x `height` output, or an error above [`MAX_IMAGE_BYTES`].
fn output_bytes(op: &'static str, width: usize, height: usize) -> Result<usize> {
    match width.checked_mul(height).and_then(|n| n.checked_mul(3)) {
        Some(bytes) if bytes <= MAX_IMAGE_BYTES => Ok(bytes),
        _ => Err(invalid(op, format!("a {width} x {height} image exceeds the {MAX_IMAGE_BYTES} bytes of RGB allowed"))),
    }
}

/// An empty buffer with room for `bytes`: the memory is asked for here, so a machine that has less
/// gets an error instead of an allocator abort.
fn allocate(op: &'static str, bytes: usize) -> Result<Vec<u8>> {
    let mut rgb = Vec::new();
    rgb.try_reserve_exact(bytes).map_err(|e| invalid(op, format!("cannot allocate {bytes} bytes of RGB: {e}")))?;
    Ok(rgb)
}

fn invalid(op: &'static str, msg: String) -> Error {
    Error::InvalidArgument { op, msg }
}

fn to_byte(v: f32) -> u8 {
    let unit = (v.clamp(-1.0, 1.0) + 1.0) * 0.5;
    // NaN (a broken kernel) maps to 0 rather than panicking.
    (unit * 255.0).round().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inconsistent_or_overflowing_images_are_errors() {
        assert!(Image::from_decoder_output(&[0.0; 11], 1, 2, 2).is_err(), "1 x 3 x 2 x 2 needs 12 values");
        assert!(Image::from_decoder_output(&[], 1, usize::MAX, 2).is_err());
        let pair = Image::from_decoder_output(&[1.0; 24], 2, 2, 2).unwrap();
        assert_eq!(pair.len(), 2);
        assert!(pair.iter().all(|image| image.rgb == [255; 12]));
        let grid = Image::square_grid(&pair).unwrap();
        assert_eq!((grid.width, grid.height, grid.rgb.len()), (6, 2, 36), "two 2 x 2 cells, 2 pixels apart");
        // The fields are public: an image whose bytes disagree with its size is refused.
        let torn = Image { width: 4, height: 4, rgb: vec![0; 3] };
        assert!(Image::square_grid(&[pair[0].clone(), torn.clone()]).is_err());
        assert!(torn.upscale_nearest(2).is_err());
        assert!(pair[0].upscale_nearest(usize::MAX).is_err());
        assert_eq!(pair[0].upscale_nearest(3).unwrap().rgb.len(), 6 * 6 * 3);
    }

    #[test]
    fn outputs_past_the_byte_bound_are_refused_before_allocating() {
        // 2^20 x 2^20 pixels fit usize but are 3.3 TB: refused, not an allocator abort.
        let pixel = Image { width: 1, height: 1, rgb: vec![1, 2, 3] };
        let err = pixel.upscale_nearest(1 << 20).unwrap_err().to_string();
        assert!(err.contains("1048576 x 1048576") && err.contains(&MAX_IMAGE_BYTES.to_string()), "{err}");
        // Empty cells 2^40 high: the gaps alone would be 6.6 TB.
        let empty = Image { width: 0, height: 1 << 40, rgb: vec![] };
        let err = Image::grid(&[empty.clone(), empty], 2).unwrap_err().to_string();
        assert!(err.contains("0 x 1099511627776"), "{err}");
        assert_eq!(pixel.upscale_nearest(2).unwrap().rgb, [1, 2, 3].repeat(4));
    }
}
