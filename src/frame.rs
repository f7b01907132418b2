//! Frame and mask types shared by every stage: what a source yields and what post-processing
//! returns. Constructors check buffer lengths against the dimensions, so a `Frame` or a
//! `Segmentation` that exists is always consistent.

use thiserror::Error;

/// Largest frame side accepted from any source (a guard against absurd headers, not a model limit).
pub const MAX_SIDE: u32 = 16_384;

/// Errors building a frame from raw parts.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame has a zero dimension ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error("frame {width}x{height} exceeds the {MAX_SIDE}-pixel side limit")]
    TooLarge { width: u32, height: u32 },
    #[error("frame {width}x{height}x{channels} needs {expected} bytes, buffer has {found}")]
    BufferLength {
        width: u32,
        height: u32,
        channels: u32,
        expected: usize,
        found: usize,
    },
}

/// Physical size of one pixel, in millimetres (row spacing = vertical, column spacing = horizontal).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PixelSpacing {
    pub row_mm: f64,
    pub col_mm: f64,
}

impl PixelSpacing {
    /// Area of one pixel in mm².
    pub fn pixel_area_mm2(&self) -> f64 {
        self.row_mm * self.col_mm
    }
}

/// An 8-bit RGB frame (row-major, interleaved), with its pixel spacing when the source knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
    spacing: Option<PixelSpacing>,
}

fn check_dims(width: u32, height: u32, channels: u32, found: usize) -> Result<(), FrameError> {
    if width == 0 || height == 0 {
        return Err(FrameError::Empty { width, height });
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(FrameError::TooLarge { width, height });
    }
    let expected = width as usize * height as usize * channels as usize;
    if expected != found {
        return Err(FrameError::BufferLength {
            width,
            height,
            channels,
            expected,
            found,
        });
    }
    Ok(())
}

impl Frame {
    /// A frame from interleaved RGB bytes; the length must be `width * height * 3`.
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Result<Frame, FrameError> {
        check_dims(width, height, 3, rgb.len())?;
        Ok(Frame {
            width,
            height,
            rgb,
            spacing: None,
        })
    }

    /// A frame from 8-bit gray levels, replicated to three channels.
    pub fn from_gray(width: u32, height: u32, gray: &[u8]) -> Result<Frame, FrameError> {
        check_dims(width, height, 1, gray.len())?;
        let rgb = gray.iter().flat_map(|&g| [g, g, g]).collect();
        Frame::from_rgb(width, height, rgb)
    }

    /// The same frame with a known pixel spacing.
    pub fn with_spacing(mut self, spacing: Option<PixelSpacing>) -> Frame {
        self.spacing = spacing;
        self
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Interleaved RGB bytes, row-major.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    pub fn spacing(&self) -> Option<PixelSpacing> {
        self.spacing
    }

    /// The RGB value at (x, y); callers stay inside the frame.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// A binary mask at frame size: `true` marks the segmented structure.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    width: u32,
    height: u32,
    bits: Vec<bool>,
}

impl Mask {
    pub fn new(width: u32, height: u32, bits: Vec<bool>) -> Result<Mask, FrameError> {
        check_dims(width, height, 1, bits.len())?;
        Ok(Mask {
            width,
            height,
            bits,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn bits(&self) -> &[bool] {
        &self.bits
    }

    pub fn get(&self, x: u32, y: u32) -> bool {
        self.bits[y as usize * self.width as usize + x as usize]
    }

    /// Number of pixels set.
    pub fn area(&self) -> usize {
        self.bits.iter().filter(|&&b| b).count()
    }

    /// A mask drawn as rows of `#` (set) and `.`; whitespace around each row is ignored.
    #[cfg(test)]
    pub(crate) fn from_ascii(picture: &str) -> Mask {
        let rows: Vec<&str> = picture
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let bits = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        Mask::new(rows[0].len() as u32, rows.len() as u32, bits).expect("rows of equal length")
    }

    /// The inverse of [`Mask::from_ascii`], rows joined by newlines.
    #[cfg(test)]
    pub(crate) fn to_ascii(&self) -> String {
        self.bits
            .chunks(self.width as usize)
            .map(|row| row.iter().map(|&b| if b { '#' } else { '.' }).collect())
            .collect::<Vec<String>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rejects_wrong_buffer_length() {
        let err = Frame::from_rgb(4, 2, vec![0; 23]).unwrap_err();
        assert_eq!(
            err,
            FrameError::BufferLength {
                width: 4,
                height: 2,
                channels: 3,
                expected: 24,
                found: 23
            }
        );
    }

    #[test]
    fn frame_rejects_zero_and_absurd_sizes() {
        assert!(matches!(
            Frame::from_rgb(0, 5, vec![]),
            Err(FrameError::Empty { .. })
        ));
        assert!(matches!(
            Frame::from_gray(MAX_SIDE + 1, 1, &[]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn gray_is_replicated_to_rgb() {
        let f = Frame::from_gray(2, 1, &[10, 200]).unwrap();
        assert_eq!(f.pixel(1, 0), [200, 200, 200]);
    }
}
