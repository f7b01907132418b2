//! Pixel formats that live sources deliver, and their conversion to RGB8 [`Frame`]s.
//!
//! - `gray8` (V4L2 `GREY`): one byte per pixel, replicated to three channels.
//! - `rgb24` (V4L2 `RGB3`): three bytes per pixel, R G B.
//! - `yuyv` (V4L2 `YUYV`, YUV 4:2:2): four bytes per pixel pair, `Y0 U Y1 V`, converted with
//!   the ITU-R BT.601 matrix at limited ("studio", "TV") range, luma 16–235 and chroma 16–240,
//!   which is what cameras and capture cards send unless they say otherwise. The integer form
//!   used (8-bit fixed point, rounded) is, with C = Y − 16, D = U − 128, E = V − 128:
//!   R = (298 C + 409 E + 128) >> 8, G = (298 C − 100 D − 208 E + 128) >> 8,
//!   B = (298 C + 516 D + 128) >> 8, each clamped to 0–255.
//! - `mjpeg` (V4L2 `MJPG`): one JPEG image per frame, decoded by the `image` crate (which
//!   supplies the default Huffman tables that many cameras leave out).
//!
//! Rows may be padded (a V4L2 driver's `bytesperline`): every converter takes a row stride in
//! bytes. A buffer too short for its dimensions is a [`PixelError`], never a panic.

use std::fmt;
use std::str::FromStr;

use image::ImageFormat;
use thiserror::Error;

use crate::frame::{Frame, FrameError, MAX_SIDE};
use crate::input::guard_panic;

/// A pixel format a raw or V4L2 source can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum PixelFormat {
    /// 8-bit gray (`gray8`, also spelled `grey`; V4L2 `GREY`).
    Gray8,
    /// 8-bit RGB, interleaved (`rgb24`; V4L2 `RGB3`).
    Rgb24,
    /// YUV 4:2:2 interleaved `Y0 U Y1 V`, BT.601 limited range (`yuyv`; V4L2 `YUYV`).
    Yuyv,
    /// Motion JPEG, one JPEG per frame (`mjpeg`; V4L2 `MJPG`). Frames vary in size, so raw
    /// streams cannot carry it.
    Mjpeg,
}

/// The names [`PixelFormat::from_str`] accepts, for error messages.
pub const PIXEL_FORMAT_NAMES: &str = "gray8 (or grey), rgb24, yuyv, mjpeg";

impl PixelFormat {
    /// The canonical name: `gray8`, `rgb24`, `yuyv` or `mjpeg`.
    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Gray8 => "gray8",
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Mjpeg => "mjpeg",
        }
    }

    /// Bytes of one unpadded row of `width` pixels; `None` for MJPEG (compressed).
    pub fn row_bytes(self, width: u32) -> Option<usize> {
        let per_pixel = match self {
            PixelFormat::Gray8 => 1,
            PixelFormat::Yuyv => 2,
            PixelFormat::Rgb24 => 3,
            PixelFormat::Mjpeg => return None,
        };
        Some(width as usize * per_pixel)
    }

    /// Bytes of one unpadded `width × height` frame; `None` for MJPEG (compressed).
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        self.row_bytes(width).map(|row| row * height as usize)
    }

    /// Checks that frames of `width × height` can be carried in this format: both sides in
    /// 1..=[`MAX_SIDE`], and an even width for YUYV (pixels come in pairs).
    pub fn check_size(self, width: u32, height: u32) -> Result<(), PixelError> {
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(PixelError::BadSize { width, height });
        }
        if self == PixelFormat::Yuyv && !width.is_multiple_of(2) {
            return Err(PixelError::OddYuyvWidth { width });
        }
        Ok(())
    }

    /// Converts one frame to RGB8. `stride` is the distance between row starts in bytes (at
    /// least [`PixelFormat::row_bytes`]; ignored for MJPEG, whose decoded size wins).
    pub fn to_frame(
        self,
        data: &[u8],
        width: u32,
        height: u32,
        stride: usize,
    ) -> Result<Frame, PixelError> {
        match self {
            PixelFormat::Gray8 => {
                let rgb = gray_to_rgb(data, width, height, stride)?;
                Ok(Frame::from_rgb(width, height, rgb)?)
            }
            PixelFormat::Rgb24 => {
                let rgb = unpad(self, data, width, height, stride)?;
                Ok(Frame::from_rgb(width, height, rgb)?)
            }
            PixelFormat::Yuyv => {
                let rgb = yuyv_to_rgb(data, width, height, stride)?;
                Ok(Frame::from_rgb(width, height, rgb)?)
            }
            PixelFormat::Mjpeg => decode_jpeg(data),
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PixelFormat {
    type Err = String;

    /// Parses a format name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<PixelFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "gray8" | "grey" => Ok(PixelFormat::Gray8),
            "rgb24" => Ok(PixelFormat::Rgb24),
            "yuyv" => Ok(PixelFormat::Yuyv),
            "mjpeg" => Ok(PixelFormat::Mjpeg),
            _ => Err(format!(
                "unknown pixel format {s:?} (expected {PIXEL_FORMAT_NAMES})"
            )),
        }
    }
}

impl TryFrom<String> for PixelFormat {
    type Error = String;

    fn try_from(s: String) -> Result<PixelFormat, String> {
        s.parse()
    }
}

/// Why bytes could not become a frame.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum PixelError {
    /// A side is zero or beyond the frame side limit.
    #[error("frame size {width}x{height} is not supported (each side 1 to {MAX_SIDE} pixels)")]
    BadSize { width: u32, height: u32 },
    /// YUYV carries pixels in pairs.
    #[error("yuyv frames need an even width, got {width}")]
    OddYuyvWidth { width: u32 },
    /// The row stride is shorter than a row.
    #[error("row stride {stride} is shorter than a {format} row of {width} pixels ({row} bytes)")]
    Stride {
        format: PixelFormat,
        width: u32,
        stride: usize,
        row: usize,
    },
    /// The buffer is shorter than the frame it should hold.
    #[error(
        "{format} frame {width}x{height} (row stride {stride}) needs {expected} bytes, buffer \
         has {found}"
    )]
    Short {
        format: PixelFormat,
        width: u32,
        height: u32,
        stride: usize,
        expected: usize,
        found: usize,
    },
    /// A JPEG frame the decoder rejects (truncated or corrupt).
    #[error("cannot decode mjpeg frame ({bytes} bytes): {reason}")]
    Jpeg { bytes: usize, reason: String },
    /// Converted pixels that do not make a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The bytes needed for `height` rows at `stride`, the last row unpadded; checks the stride.
fn needed(
    format: PixelFormat,
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<usize, PixelError> {
    format.check_size(width, height)?;
    let row = format.row_bytes(width).unwrap_or(0);
    if stride < row {
        return Err(PixelError::Stride {
            format,
            width,
            stride,
            row,
        });
    }
    let expected = stride * (height as usize - 1) + row;
    if data.len() < expected {
        return Err(PixelError::Short {
            format,
            width,
            height,
            stride,
            expected,
            found: data.len(),
        });
    }
    Ok(row)
}

/// The rows of `data` without their padding.
fn rows(data: &[u8], row: usize, height: u32, stride: usize) -> impl Iterator<Item = &[u8]> {
    (0..height as usize).map(move |y| &data[y * stride..y * stride + row])
}

/// Copies the unpadded rows of an RGB24 frame.
fn unpad(
    format: PixelFormat,
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, PixelError> {
    let row = needed(format, data, width, height, stride)?;
    Ok(rows(data, row, height, stride).flatten().copied().collect())
}

/// 8-bit gray to interleaved RGB8: each level replicated to three channels.
pub fn gray_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, PixelError> {
    let row = needed(PixelFormat::Gray8, data, width, height, stride)?;
    Ok(rows(data, row, height, stride)
        .flatten()
        .flat_map(|&g| [g, g, g])
        .collect())
}

/// YUYV (BT.601, limited range; see the module docs for the exact integer form) to RGB8.
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, PixelError> {
    let row = needed(PixelFormat::Yuyv, data, width, height, stride)?;
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for line in rows(data, row, height, stride) {
        for quad in line.chunks_exact(4) {
            let (u, v) = (quad[1], quad[3]);
            rgb.extend_from_slice(&yuv_to_rgb(quad[0], u, v));
            rgb.extend_from_slice(&yuv_to_rgb(quad[2], u, v));
        }
    }
    Ok(rgb)
}

/// One BT.601 limited-range YUV sample to RGB8.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

/// Decodes one JPEG frame to RGB8. Decoder panics on hostile data become errors.
fn decode_jpeg(data: &[u8]) -> Result<Frame, PixelError> {
    let jpeg_err = |reason: String| PixelError::Jpeg {
        bytes: data.len(),
        reason,
    };
    let decoded = guard_panic(|| image::load_from_memory_with_format(data, ImageFormat::Jpeg))
        .map_err(jpeg_err)?
        .map_err(|e| jpeg_err(e.to_string()))?
        .into_rgb8();
    let (width, height) = decoded.dimensions();
    Ok(Frame::from_rgb(width, height, decoded.into_raw())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt601_limited_range_reference_values() {
        // black, white and mid gray: luma 16..235 spans 0..255, neutral chroma adds nothing
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(126, 128, 128), [128, 128, 128]);
        // below black and above white clamp
        assert_eq!(yuv_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(255, 128, 128), [255, 255, 255]);
        // the rounded BT.601 limited-range encodings of the primaries (the exact float
        // result for green is 0.18, 255, 0.93)
        assert_eq!(yuv_to_rgb(81, 90, 240), [255, 0, 0]);
        assert_eq!(yuv_to_rgb(145, 54, 34), [0, 255, 1]);
        assert_eq!(yuv_to_rgb(41, 240, 110), [0, 0, 255]);
        // a worked value: C = 298 * 84, D = -28, E = 30
        // R = (25032 + 12270 + 128) >> 8 = 146, G = (25032 + 2800 - 6240 + 128) >> 8 = 84,
        // B = (25032 - 14448 + 128) >> 8 = 41
        assert_eq!(yuv_to_rgb(100, 100, 158), [146, 84, 41]);
        // two values that together change under any ±1 change of one of the five
        // coefficients (float BT.601: 8.49, 9.47, 143.47 and 97.39, 44.55, 5.46)
        assert_eq!(yuv_to_rgb(37, 187, 118), [8, 10, 143]);
        assert_eq!(yuv_to_rgb(64, 103, 154), [97, 45, 5]);
    }

    #[test]
    fn yuyv_pairs_share_chroma_and_padding_is_skipped() {
        // 2x2 frame, rows padded to 6 bytes
        let data = [
            16, 128, 235, 128, 0xee, 0xee, //
            81, 90, 126, 240, 0xee, 0xee,
        ];
        let rgb = yuyv_to_rgb(&data, 2, 2, 6).unwrap();
        assert_eq!(
            rgb,
            [
                0, 0, 0, 255, 255, 255, //
                // Y 126 with the red pair's chroma: R = (32780 + 45808 + 128) >> 8 = 307,
                // clamped; G = (32780 + 3800 - 23296 + 128) >> 8 = 52;
                // B = (32780 - 19608 + 128) >> 8 = 51
                255, 0, 0, 255, 52, 51
            ]
        );
    }

    #[test]
    fn gray_replicates_to_three_channels_and_skips_padding() {
        let data = [0, 7, 255, 9, 9, 100, 200, 1, 9, 9];
        let rgb = gray_to_rgb(&data, 3, 2, 5).unwrap();
        assert_eq!(
            rgb,
            [0, 0, 0, 7, 7, 7, 255, 255, 255, 100, 100, 100, 200, 200, 200, 1, 1, 1]
        );
    }

    #[test]
    fn rgb24_rows_lose_their_padding() {
        let data = [1, 2, 3, 0, 4, 5, 6, 0];
        let frame = PixelFormat::Rgb24.to_frame(&data, 1, 2, 4).unwrap();
        assert_eq!(frame.rgb(), &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn short_buffers_bad_strides_and_odd_yuyv_widths_are_errors() {
        assert_eq!(
            gray_to_rgb(&[0; 5], 3, 2, 3).unwrap_err(),
            PixelError::Short {
                format: PixelFormat::Gray8,
                width: 3,
                height: 2,
                stride: 3,
                expected: 6,
                found: 5
            }
        );
        assert!(matches!(
            yuyv_to_rgb(&[0; 16], 4, 2, 6),
            Err(PixelError::Stride { row: 8, .. })
        ));
        assert_eq!(
            yuyv_to_rgb(&[0; 12], 3, 2, 6).unwrap_err(),
            PixelError::OddYuyvWidth { width: 3 }
        );
        assert_eq!(
            PixelFormat::Rgb24.to_frame(&[], 0, 2, 0).unwrap_err(),
            PixelError::BadSize {
                width: 0,
                height: 2
            }
        );
    }

    #[test]
    fn mjpeg_decodes_a_jpeg_and_rejects_garbage() {
        let mut jpeg = Vec::new();
        let img = image::RgbImage::from_pixel(16, 8, image::Rgb([200, 40, 40]));
        img.write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        let frame = PixelFormat::Mjpeg.to_frame(&jpeg, 0, 0, 0).unwrap();
        assert_eq!((frame.width(), frame.height()), (16, 8));
        let [r, g, b] = frame.pixel(8, 4);
        assert!(r.abs_diff(200) < 8 && g.abs_diff(40) < 8 && b.abs_diff(40) < 8);

        let cut = &jpeg[..jpeg.len() / 3];
        assert!(matches!(
            PixelFormat::Mjpeg.to_frame(cut, 0, 0, 0),
            Err(PixelError::Jpeg { .. })
        ));
        assert!(matches!(
            PixelFormat::Mjpeg.to_frame(b"not a jpeg", 0, 0, 0),
            Err(PixelError::Jpeg { bytes: 10, .. })
        ));
    }

    #[test]
    fn names_parse_case_insensitively_and_unknown_names_are_listed() {
        assert_eq!("GREY".parse::<PixelFormat>(), Ok(PixelFormat::Gray8));
        assert_eq!("gray8".parse::<PixelFormat>(), Ok(PixelFormat::Gray8));
        assert_eq!("YUYV".parse::<PixelFormat>(), Ok(PixelFormat::Yuyv));
        let err = "nv12".parse::<PixelFormat>().unwrap_err();
        assert!(err.contains("\"nv12\"") && err.contains("rgb24"), "{err}");
        assert_eq!(PixelFormat::Yuyv.frame_bytes(4, 3), Some(24));
        assert_eq!(PixelFormat::Mjpeg.frame_bytes(4, 3), None);
    }
}
