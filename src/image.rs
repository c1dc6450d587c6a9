//! 8-bit RGB images from decoder output, grids and nearest upscaling for previews, and PNG files
//! written atomically (a temporary file renamed into place, so a failure never leaves a partial file).

use std::path::Path;

use crate::error::{Error, Result};
use crate::output::write_atomic;

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
        // Each image is checked, so w x h x 3 fits; the grid's sides and bytes may not.
        let side = |cells: usize, cell: usize| cell.checked_add(GAP)?.checked_mul(cells)?.checked_sub(GAP);
        let (Some(width), Some(height)) = (side(columns, w), side(rows, h)) else {
            return Err(invalid(OP, format!("{} images of {w} x {h} overflow a grid", images.len())));
        };
        let Some(bytes) = width.checked_mul(height).and_then(|n| n.checked_mul(3)) else {
            return Err(invalid(OP, format!("a {width} x {height} grid overflows")));
        };
        let mut rgb = vec![0u8; bytes];
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
    pub fn upscale_nearest(&self, factor: usize) -> Result<Image> {
        const OP: &str = "Image::upscale_nearest";
        self.check(OP)?;
        let factor = factor.max(1);
        let sides = self.width.checked_mul(factor).zip(self.height.checked_mul(factor));
        let Some((width, height)) = sides.filter(|&(w, h)| w.checked_mul(h).and_then(|n| n.checked_mul(3)).is_some())
        else {
            return Err(invalid(OP, format!("{} x {} upscaled {factor} times overflows", self.width, self.height)));
        };
        let mut rgb = Vec::with_capacity(width * height * 3);
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
}
