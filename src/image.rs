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
    /// [0, 1] as (x + 1) / 2, then to 0..=255 with rounding.
    pub fn from_decoder_output(data: &[f32], batch: usize, height: usize, width: usize) -> Vec<Image> {
        let plane = height * width;
        (0..batch)
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
            .collect()
    }

    /// The images in a grid as close to square as they fill: ceil(sqrt(n)) columns.
    pub fn square_grid(images: &[Image]) -> Image {
        Self::grid(images, (images.len() as f64).sqrt().ceil() as usize)
    }

    /// The images in a grid of `columns` (the last row may be short), 2 black pixels between.
    pub fn grid(images: &[Image], columns: usize) -> Image {
        let Some(first) = images.first() else { return Image { width: 0, height: 0, rgb: Vec::new() } };
        if images.len() == 1 {
            return first.clone();
        }
        const GAP: usize = 2;
        let columns = columns.clamp(1, images.len());
        let rows = images.len().div_ceil(columns);
        let (w, h) = (first.width, first.height);
        let width = columns * w + (columns - 1) * GAP;
        let height = rows * h + (rows - 1) * GAP;
        let mut rgb = vec![0u8; width * height * 3];
        for (i, image) in images.iter().enumerate() {
            let (x0, y0) = ((i % columns) * (w + GAP), (i / columns) * (h + GAP));
            for y in 0..h.min(image.height) {
                let src = &image.rgb[y * image.width * 3..(y * image.width + w.min(image.width)) * 3];
                let start = ((y0 + y) * width + x0) * 3;
                rgb[start..start + src.len()].copy_from_slice(src);
            }
        }
        Image { width, height, rgb }
    }

    /// Every pixel repeated `factor` times along both axes (no smoothing: coarse tokens stay visible).
    pub fn upscale_nearest(&self, factor: usize) -> Image {
        let factor = factor.max(1);
        let (width, height) = (self.width * factor, self.height * factor);
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let i = ((y / factor) * self.width + x / factor) * 3;
                rgb.extend_from_slice(&self.rgb[i..i + 3]);
            }
        }
        Image { width, height, rgb }
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

fn to_byte(v: f32) -> u8 {
    let unit = (v.clamp(-1.0, 1.0) + 1.0) * 0.5;
    // NaN (a broken kernel) maps to 0 rather than panicking.
    (unit * 255.0).round().clamp(0.0, 255.0) as u8
}
