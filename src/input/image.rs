//! PNG, JPEG and BMP files through the `image` crate, as one RGB8 [`Frame`] each.
//!
//! Gray images are replicated to three channels, 16-bit samples are scaled to 8 bits, and an
//! alpha channel is dropped (not composited). Plain images carry no pixel spacing. The header
//! is read first, and the dimensions checked, before the pixels are decoded.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::{guard_panic, Dims, InputError, MAX_PIXEL_BYTES};
use crate::frame::Frame;

/// The plain image formats this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageKind {
    Png,
    Jpeg,
    Bmp,
}

impl ImageKind {
    /// The format whose signature starts `head`, if any.
    pub(crate) fn sniff(head: &[u8]) -> Option<ImageKind> {
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageKind::Png)
        } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(ImageKind::Jpeg)
        } else if head.starts_with(b"BM") {
            Some(ImageKind::Bmp)
        } else {
            None
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ImageKind::Png => "PNG",
            ImageKind::Jpeg => "JPEG",
            ImageKind::Bmp => "BMP",
        }
    }

    fn format(self) -> ImageFormat {
        match self {
            ImageKind::Png => ImageFormat::Png,
            ImageKind::Jpeg => ImageFormat::Jpeg,
            ImageKind::Bmp => ImageFormat::Bmp,
        }
    }
}

/// Decodes the image in `file` (positioned at its start) into one RGB8 frame.
pub(crate) fn load(path: &Path, file: File, kind: ImageKind) -> Result<Frame, InputError> {
    let fail = |reason: String| InputError::Image {
        path: path.to_path_buf(),
        format: kind.name(),
        reason,
    };
    // Sides are checked below against MAX_SIDE, to report TooLarge with the dimensions; the
    // decoder's own allocation budget is the same byte budget as for DICOM.
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXEL_BYTES);

    let mut reader = ImageReader::with_format(BufReader::new(file), kind.format());
    reader.limits(limits);
    let decoded = guard_panic(|| -> Result<DynamicImage, InputError> {
        let decoder = reader.into_decoder().map_err(|e| fail(e.to_string()))?;
        let (cols, rows) = decoder.dimensions();
        let color = decoder.color_type();
        let samples = u32::from(color.channel_count());
        Dims {
            cols,
            rows,
            frames: 1,
            samples,
            bits: u32::from(color.bits_per_pixel()) / samples.max(1),
        }
        .check(path)?;
        DynamicImage::from_decoder(decoder).map_err(|e| fail(e.to_string()))
    })
    .map_err(fail)??;

    let (cols, rows) = (decoded.width(), decoded.height());
    let rgb = decoded.into_rgb8().into_raw();
    Frame::from_rgb(cols, rows, rgb).map_err(|source| InputError::Frame {
        path: path.to_path_buf(),
        source,
    })
}
