//! Files in, frames out: PNG, JPEG and BMP images and DICOM Part 10 files become 8-bit RGB
//! [`Frame`]s, with their pixel spacing when the file records one.
//!
//! [`load`] picks the decoder from the file's content (the `DICM` magic at offset 128, or the
//! PNG, JPEG and BMP signatures), never from the extension alone:
//! - `image`: one frame per file through the `image` crate; gray, alpha and 16-bit images are
//!   converted to RGB8.
//! - `dicom`: every frame of a single- or multi-frame file, through dicom-rs.
//!
//! `load_mono_dicom` reads a monochrome DICOM file through the same checks as modality values
//! with its patient geometry, for the DICOM series of [`crate::volume`].
//!
//! Invariant: bad input is an [`InputError`] that names the file and the problem with its
//! values, never a panic. Sizes are checked before anything is decoded or allocated: each side
//! against [`MAX_SIDE`], the stored and the decoded RGB8 bytes of all frames against 1 GiB,
//! and the file against 2 GiB.

mod dicom;
mod image;

pub(crate) use dicom::MonoImage;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::frame::{Frame, FrameError, MAX_SIDE};

/// Largest input file read at all (2 GiB).
const MAX_FILE_BYTES: u64 = 2 << 30;

/// Largest pixel buffer a file may need, stored or decoded to RGB8 (1 GiB over all frames).
const MAX_PIXEL_BYTES: u64 = 1 << 30;

/// Why a file could not become frames. Every variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file holds no bytes.
    #[error("{}: file is empty", path.display())]
    Empty { path: PathBuf },
    /// The file is larger than any input this build reads.
    #[error("{}: file holds {bytes} bytes, more than the {limit}-byte limit", path.display())]
    FileTooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    /// The content matches none of the supported formats.
    #[error(
        "{}: unknown file format (starts with {head}); expected DICOM (\"DICM\" at offset 128), \
         PNG, JPEG or BMP",
        path.display()
    )]
    UnknownFormat {
        path: PathBuf,
        /// The first bytes, in hex.
        head: String,
    },
    /// A PNG, JPEG or BMP file that the decoder rejects (truncated, corrupt).
    #[error("{}: cannot decode {format} image: {reason}", path.display())]
    Image {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// A DICOM file whose structure cannot be parsed.
    #[error("{}: not a readable DICOM file: {reason}", path.display())]
    Dicom { path: PathBuf, reason: String },
    /// A DICOM file that ends before the data it declares: a cut copy, or a corrupt length.
    #[error("{}: file is truncated ({file_bytes} bytes): {reason}", path.display())]
    Truncated {
        path: PathBuf,
        file_bytes: u64,
        reason: String,
    },
    /// A transfer syntax this build cannot decode.
    #[error(
        "{}: transfer syntax {uid} ({name}) is not supported in this build (supported: implicit \
         and explicit VR little endian, deflated explicit VR little endian, RLE Lossless, JPEG \
         Baseline)",
        path.display()
    )]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },
    /// A required DICOM attribute is absent.
    #[error("{}: missing {attribute}", path.display())]
    MissingAttribute {
        path: PathBuf,
        /// Keyword and tag, e.g. `Rows (0028,0010)`.
        attribute: &'static str,
    },
    /// A DICOM attribute holds a value that cannot be used.
    #[error("{}: {attribute} is {value}, expected {expected}", path.display())]
    InvalidAttribute {
        path: PathBuf,
        attribute: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Rows, columns or frames is zero.
    #[error(
        "{}: image has no pixels ({cols}x{rows}, {})",
        path.display(),
        count(*frames, "frame")
    )]
    ZeroSize {
        path: PathBuf,
        cols: u32,
        rows: u32,
        frames: u32,
    },
    /// Dimensions beyond the side limit or the byte budget.
    #[error(
        "{}: {} of {cols}x{rows}x{samples} at {bits} bits exceed the limits (sides up to \
         {MAX_SIDE} pixels, at most {limit} bytes; this needs {bytes})",
        path.display(),
        count(*frames, "frame")
    )]
    TooLarge {
        path: PathBuf,
        cols: u32,
        rows: u32,
        frames: u32,
        samples: u32,
        bits: u32,
        bytes: u64,
        limit: u64,
    },
    /// A photometric interpretation (colour model) this module does not convert.
    #[error(
        "{}: photometric interpretation {photometric:?} with {samples} samples per pixel is not \
         supported (supported: MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB, YBR_FULL, \
         YBR_FULL_422)",
        path.display()
    )]
    UnsupportedPhotometric {
        path: PathBuf,
        photometric: String,
        samples: u32,
    },
    /// A sample layout this module does not convert (bit depth, samples per pixel, ...).
    #[error("{}: unsupported pixel format: {reason}", path.display())]
    UnsupportedPixelFormat { path: PathBuf, reason: String },
    /// Native pixel data shorter than the dimensions require.
    #[error(
        "{}: pixel data holds {found} bytes, {} of {cols}x{rows}x{samples} at {bits} bits \
         need {expected}",
        path.display(),
        count(*frames, "frame")
    )]
    PixelDataLength {
        path: PathBuf,
        found: usize,
        expected: usize,
        frames: u32,
        cols: u32,
        rows: u32,
        samples: u32,
        bits: u32,
    },
    /// Compressed pixel data that cannot be decoded, or decodes to the wrong size.
    #[error(
        "{}: cannot decode pixel data{}: {reason}",
        path.display(),
        frame_label(*frame, *frames)
    )]
    PixelDecode {
        path: PathBuf,
        /// Zero-based index of the frame at fault, when known (the message counts from 1).
        frame: Option<u32>,
        frames: u32,
        reason: String,
    },
    /// Decoded pixels that do not make a valid frame.
    #[error("{}: {source}", path.display())]
    Frame {
        path: PathBuf,
        #[source]
        source: FrameError,
    },
}

/// `1 frame`, `3 frames`.
fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn frame_label(frame: Option<u32>, frames: u32) -> String {
    match frame {
        Some(i) => format!(" (frame {} of {frames})", u64::from(i) + 1),
        None => String::new(),
    }
}

impl InputError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            InputError::Io { path, .. }
            | InputError::Empty { path }
            | InputError::FileTooLarge { path, .. }
            | InputError::UnknownFormat { path, .. }
            | InputError::Image { path, .. }
            | InputError::Dicom { path, .. }
            | InputError::Truncated { path, .. }
            | InputError::UnsupportedTransferSyntax { path, .. }
            | InputError::MissingAttribute { path, .. }
            | InputError::InvalidAttribute { path, .. }
            | InputError::ZeroSize { path, .. }
            | InputError::TooLarge { path, .. }
            | InputError::UnsupportedPhotometric { path, .. }
            | InputError::UnsupportedPixelFormat { path, .. }
            | InputError::PixelDataLength { path, .. }
            | InputError::PixelDecode { path, .. }
            | InputError::Frame { path, .. } => path,
        }
    }
}

/// Frames read from one file, in file order, and what kind of file it was.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedInput {
    pub frames: Vec<Frame>,
    pub kind: InputKind,
}

/// The kind of file frames came from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// A PNG, JPEG or BMP image (always one frame).
    Image,
    /// A DICOM Part 10 file.
    Dicom {
        /// Transfer syntax UID, e.g. `1.2.840.10008.1.2.1`.
        transfer_syntax: String,
        /// Photometric interpretation as recorded in the file, e.g. `YBR_FULL_422`.
        photometric: String,
        /// Number of frames in the file (equal to the number of frames loaded).
        frame_count: u32,
        /// Time between frames of a cine loop in ms: Frame Time (0018,1063), else 1000 / Cine
        /// Rate (0018,0040), else 1000 / Recommended Display Frame Rate (0008,2144).
        frame_time_ms: Option<f64>,
    },
}

/// Reads a file into frames, choosing the decoder from its content.
///
/// DICOM files are recognised by `DICM` at offset 128; PNG, JPEG and BMP by their signatures.
/// A DICOM file without the 128-byte preamble and meta group is not recognised.
pub fn load(path: &Path) -> Result<LoadedInput, InputError> {
    let (file, file_bytes, format) = open(path)?;
    match format {
        Sniffed::Dicom => dicom::load(path, file, file_bytes),
        Sniffed::Image(format) => {
            let frame = image::load(path, file, format)?;
            Ok(LoadedInput {
                frames: vec![frame],
                kind: InputKind::Image,
            })
        }
    }
}

/// Reads a DICOM file as monochrome modality values with its patient geometry, through the
/// same checks as [`load`]; a volume is built from such slices.
pub(crate) fn load_mono_dicom(path: &Path) -> Result<MonoImage, InputError> {
    match open(path)? {
        (file, file_bytes, Sniffed::Dicom) => dicom::load_mono(path, file, file_bytes),
        (_, _, Sniffed::Image(kind)) => Err(InputError::Dicom {
            path: path.to_path_buf(),
            reason: format!("the file is a {} image, not DICOM", kind.name()),
        }),
    }
}

/// Opens a file, checks its size, and sniffs its format; the file is left at its start.
fn open(path: &Path) -> Result<(File, u64, Sniffed), InputError> {
    let io_err = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let file_bytes = file.metadata().map_err(io_err)?.len();
    if file_bytes == 0 {
        return Err(InputError::Empty {
            path: path.to_path_buf(),
        });
    }
    if file_bytes > MAX_FILE_BYTES {
        return Err(InputError::FileTooLarge {
            path: path.to_path_buf(),
            bytes: file_bytes,
            limit: MAX_FILE_BYTES,
        });
    }
    let mut head = [0u8; 132];
    let n = read_up_to(&mut file, &mut head).map_err(io_err)?;
    let head = &head[..n];
    let format = sniff(head).ok_or_else(|| InputError::UnknownFormat {
        path: path.to_path_buf(),
        head: hex_head(head),
    })?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    Ok((file, file_bytes, format))
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Dicom,
    Image(image::ImageKind),
}

pub(crate) fn sniff(head: &[u8]) -> Option<Sniffed> {
    if head.get(128..132) == Some(b"DICM") {
        Some(Sniffed::Dicom)
    } else {
        image::ImageKind::sniff(head).map(Sniffed::Image)
    }
}

fn hex_head(head: &[u8]) -> String {
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    shown.join(" ")
}

/// Fills as much of `buf` as the reader holds; returns how many bytes were read. A stream that
/// stops early (a cut gzip stream reports `UnexpectedEof`) ends the read like the end of a file.
pub(crate) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Pixel-buffer dimensions checked against [`MAX_SIDE`] and [`MAX_PIXEL_BYTES`] before
/// anything is allocated: both the stored size and the RGB8 frames it becomes must fit.
#[derive(Debug, Clone, Copy)]
struct Dims {
    cols: u32,
    rows: u32,
    frames: u32,
    samples: u32,
    bits: u32,
}

impl Dims {
    fn check(self, path: &Path) -> Result<(), InputError> {
        let Dims {
            cols,
            rows,
            frames,
            samples,
            bits,
        } = self;
        if cols == 0 || rows == 0 || frames == 0 {
            return Err(InputError::ZeroSize {
                path: path.to_path_buf(),
                cols,
                rows,
                frames,
            });
        }
        let pixels = u64::from(cols) * u64::from(rows) * u64::from(frames);
        let stored = pixels * u64::from(samples) * u64::from(bits).div_ceil(8);
        let bytes = stored.max(pixels * 3);
        if cols > MAX_SIDE || rows > MAX_SIDE || bytes > MAX_PIXEL_BYTES {
            return Err(InputError::TooLarge {
                path: path.to_path_buf(),
                cols,
                rows,
                frames,
                samples,
                bits,
                bytes,
                limit: MAX_PIXEL_BYTES,
            });
        }
        Ok(())
    }
}

/// Runs a third-party decoder on untrusted bytes, turning a panic into `Err(message)`.
///
/// The decoders (jpeg-decoder through dicom-pixeldata, the `image` codecs) index buffers with
/// sizes taken from the data; sizes are validated before calling, and this is the last line of
/// defence for what validation misses. The process-wide panic hook still reports the panic on
/// stderr. This relies on unwinding: a build with `panic = "abort"` would abort instead.
pub(crate) fn guard_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        format!("decoder panicked: {what}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_recognises_signatures() {
        let mut dicm = vec![0u8; 132];
        dicm[128..].copy_from_slice(b"DICM");
        assert_eq!(sniff(&dicm), Some(Sniffed::Dicom));
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n...."),
            Some(Sniffed::Image(image::ImageKind::Png))
        );
        assert_eq!(
            sniff(&[0xff, 0xd8, 0xff, 0xe0]),
            Some(Sniffed::Image(image::ImageKind::Jpeg))
        );
        assert_eq!(
            sniff(b"BM\x36\x24\0\0"),
            Some(Sniffed::Image(image::ImageKind::Bmp))
        );
        assert_eq!(sniff(b"GIF89a"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn dims_reject_zero_sides_huge_sides_and_huge_totals() {
        let p = Path::new("x.dcm");
        let ok = Dims {
            cols: 64,
            rows: 48,
            frames: 3,
            samples: 1,
            bits: 16,
        };
        assert!(ok.check(p).is_ok());
        let zero = Dims { rows: 0, ..ok };
        assert!(matches!(zero.check(p), Err(InputError::ZeroSize { .. })));
        let side = Dims {
            cols: MAX_SIDE + 1,
            ..ok
        };
        assert!(matches!(side.check(p), Err(InputError::TooLarge { .. })));
        let total = Dims {
            cols: 4096,
            rows: 4096,
            frames: 100,
            ..ok
        };
        assert!(matches!(total.check(p), Err(InputError::TooLarge { .. })));
    }

    #[test]
    fn guard_panic_turns_a_panic_into_an_error() {
        let caught = guard_panic(|| -> u8 { panic!("index out of range") });
        assert_eq!(caught.unwrap_err(), "decoder panicked: index out of range");
        assert_eq!(guard_panic(|| 7), Ok(7));
    }
}
