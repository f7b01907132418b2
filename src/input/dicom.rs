//! DICOM Part 10 files through dicom-rs: every frame becomes an RGB8
//! [`Frame`](crate::frame::Frame), with the file's pixel spacing.
//!
//! Steps, each failing with an [`InputError`] that names the file:
//! 1. `scan`: every length declared in the meta group is checked against the file size, then
//!    the meta group is parsed and the transfer syntax checked against the ones this build
//!    decodes (implicit/explicit VR little endian, deflated explicit VR little endian, RLE
//!    Lossless, JPEG Baseline);
//! 2. `scan` again over the data set (lengths, sequence nesting), then the parse with
//!    dicom-object; a parse that fails where a header-only parse succeeds is reported as a
//!    truncated file;
//! 3. the image attributes are read and checked (dimensions against
//!    [`MAX_SIDE`](crate::frame::MAX_SIDE) and a byte budget, bit depth, photometric
//!    interpretation, sample layout) before any pixel buffer is allocated;
//! 4. `pixels`: native pixel data is length-checked; encapsulated pixel data is checked
//!    fragment by fragment and decoded by dicom-pixeldata behind
//!    [`guard_panic`](super::guard_panic);
//! 5. `convert`: samples to RGB8. Monochrome data goes through Rescale Slope/Intercept, then
//!    Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID) when a usable window is present,
//!    else the identity for plain unsigned 8-bit data, else the min–max of all frames (one
//!    mapping for the whole file, so a cine loop does not flicker); MONOCHROME1 is inverted;
//!    PALETTE COLOR goes through its lookup tables; YBR_FULL and YBR_FULL_422 become RGB.
//!
//! For volumes, `load_mono` runs steps 1 to 4 on a monochrome file and returns its modality
//! values (Rescale Slope/Intercept, no window, no inversion) with Image Position (Patient),
//! Image Orientation (Patient) (checked: two orthogonal unit vectors) and the pixel spacing.
//!
//! Optional display attributes that cannot be used (an unparsable rescale, a window of zero
//! width, a spacing of zero) are ignored rather than refused. Not applied: VOI LUT Sequences,
//! rescale and window inside functional groups, segmented palettes, overlays, float pixel data.
//!
//! Known gap: a deflated data set is compressed, so its lengths cannot be scanned before the
//! parse; a corrupt deflated file can make dicom-object reserve gigabytes (transiently) before
//! it fails, and one with thousands of nested sequences can overflow the stack.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTable, InMemDicomObject, OpenFileOptions, Tag};

mod convert;
mod pixels;
mod scan;

use super::{Dims, InputError, InputKind, LoadedInput};
use crate::frame::PixelSpacing;
use convert::Layout;
use pixels::{encapsulated_pixels, native_pixels};
use scan::{Scan, Stop};

/// How a transfer syntax stores pixel data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Native,
    Rle,
    Jpeg,
}

/// Transfer syntaxes by UID: name, and the codec when this build decodes it.
#[rustfmt::skip]
const TRANSFER_SYNTAXES: &[(&str, &str, Option<Codec>)] = &[
    ("1.2.840.10008.1.2", "Implicit VR Little Endian", Some(Codec::Native)),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian", Some(Codec::Native)),
    ("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", Some(Codec::Native)),
    ("1.2.840.10008.1.2.5", "RLE Lossless", Some(Codec::Rle)),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", Some(Codec::Jpeg)),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian", None),
    ("1.2.840.10008.1.2.1.98", "Encapsulated Uncompressed Explicit VR Little Endian", None),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)", None),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)", None),
    ("1.2.840.10008.1.2.4.70", "JPEG Lossless, First-Order Prediction (Process 14, SV1)", None),
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", None),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", None),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 (Lossless Only)", None),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000", None),
    ("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Multi-component (Lossless Only)", None),
    ("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2 Multi-component", None),
    ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile @ Main Level", None),
    ("1.2.840.10008.1.2.4.101", "MPEG2 Main Profile @ High Level", None),
    ("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1", None),
    ("1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD-compatible High Profile", None),
    ("1.2.840.10008.1.2.4.104", "MPEG-4 AVC/H.264 High Profile For 2D Video", None),
    ("1.2.840.10008.1.2.4.105", "MPEG-4 AVC/H.264 High Profile For 3D Video", None),
    ("1.2.840.10008.1.2.4.106", "MPEG-4 AVC/H.264 Stereo High Profile", None),
    ("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile", None),
    ("1.2.840.10008.1.2.4.108", "HEVC/H.265 Main 10 Profile", None),
    ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", None),
    ("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", None),
    ("1.2.840.10008.1.2.4.112", "JPEG XL", None),
    ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 (Lossless Only)", None),
    ("1.2.840.10008.1.2.4.202", "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)", None),
    ("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000", None),
    ("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression", None),
];

const IMPLICIT: &str = "1.2.840.10008.1.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

fn transfer_syntax(uid: &str) -> (&'static str, Option<Codec>) {
    TRANSFER_SYNTAXES
        .iter()
        .find(|(u, _, _)| *u == uid)
        .map(|&(_, name, codec)| (name, codec))
        .unwrap_or(("unknown transfer syntax", None))
}

/// How stored samples become colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColorModel {
    Mono {
        invert: bool,
    },
    Palette,
    Rgb,
    YbrFull,
    /// YBR_FULL_422 as stored natively: `Y0 Y1 Cb Cr` for each horizontal pair of pixels.
    YbrFull422,
}

/// A VOI LUT function applied with the window (PS3.3 C.11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq)]
enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    center: f64,
    width: f64,
    function: VoiFunction,
}

impl Window {
    /// Maps a modality value to 0..=255.
    fn apply(self, x: f64) -> f64 {
        let Window {
            center: c,
            width: w,
            function,
        } = self;
        let unit = match function {
            VoiFunction::Linear => {
                if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    1.0
                } else {
                    (x - (c - 0.5)) / (w - 1.0) + 0.5
                }
            }
            VoiFunction::LinearExact => {
                if x <= c - w / 2.0 {
                    0.0
                } else if x > c + w / 2.0 {
                    1.0
                } else {
                    (x - c) / w + 0.5
                }
            }
            VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
        };
        unit * 255.0
    }
}

/// The image attributes that shape the pixel data.
#[derive(Debug, Clone)]
struct Header {
    rows: u32,
    cols: u32,
    frames: u32,
    samples: u32,
    bits_allocated: u32,
    bits_stored: u32,
    signed: bool,
    planar: bool,
    photometric: String,
    color: ColorModel,
    slope: f64,
    intercept: f64,
    window: Option<Window>,
}

impl Header {
    fn bytes_per_sample(&self) -> usize {
        self.bits_allocated as usize / 8
    }

    fn pixels(&self) -> usize {
        self.rows as usize * self.cols as usize
    }

    /// Bytes of one frame as stored natively.
    fn native_frame_len(&self) -> usize {
        match self.color {
            ColorModel::YbrFull422 => self.pixels() * 2,
            _ => self.pixels() * self.samples as usize * self.bytes_per_sample(),
        }
    }

    /// A stored value through Rescale Slope/Intercept.
    fn modality(&self, stored: i32) -> f64 {
        f64::from(stored) * self.slope + self.intercept
    }

    fn dims(&self) -> Dims {
        Dims {
            cols: self.cols,
            rows: self.rows,
            frames: self.frames,
            samples: self.samples,
            bits: self.bits_allocated,
        }
    }
}

/// A parsed DICOM file whose image attributes passed the checks of steps 1 to 3.
struct Image {
    obj: DefaultDicomObject,
    codec: Codec,
    header: Header,
    ts_uid: String,
}

/// Steps 1 to 3: parses the file open in `file` and checks its image attributes.
fn open_image(path: &Path, file: File, file_bytes: u64) -> Result<Image, InputError> {
    let (obj, codec) = open(path, file, file_bytes)?;
    let ts_uid = obj.meta().transfer_syntax().to_string();
    let header = read_header(path, &obj, codec)?;
    header.dims().check(path)?;
    Ok(Image {
        obj,
        codec,
        header,
        ts_uid,
    })
}

impl Image {
    /// Step 4: the pixel data of every frame, and how it is laid out.
    fn pixels(&self, path: &Path) -> Result<(Cow<'_, [u8]>, Layout<'_>), InputError> {
        let Image {
            obj,
            codec,
            header,
            ts_uid,
        } = self;
        let element = match obj.get(tags::PIXEL_DATA) {
            Some(element) => element,
            None if obj.get(tags::FLOAT_PIXEL_DATA).is_some()
                || obj.get(tags::DOUBLE_FLOAT_PIXEL_DATA).is_some() =>
            {
                return Err(InputError::UnsupportedPixelFormat {
                    path: path.to_path_buf(),
                    reason: "float pixel data (7FE0,0008/0009) is not converted".to_string(),
                })
            }
            None => {
                return Err(InputError::MissingAttribute {
                    path: path.to_path_buf(),
                    attribute: "Pixel Data (7FE0,0010)",
                })
            }
        };
        Ok(match codec {
            Codec::Native => {
                let data = native_pixels(path, element, header, ts_uid)?;
                let layout = Layout {
                    header,
                    color: header.color,
                    planar: header.planar,
                    frame_len: header.native_frame_len(),
                };
                (data, layout)
            }
            Codec::Rle | Codec::Jpeg => {
                let data = encapsulated_pixels(path, obj, element, header, *codec)?;
                // The JPEG decoder outputs RGB. RLE keeps the colour space, at full resolution
                // (YBR_FULL_422 is not valid with RLE, but if present its samples are not
                // packed).
                let color = match (codec, header.color) {
                    (Codec::Jpeg, ColorModel::YbrFull | ColorModel::YbrFull422) => ColorModel::Rgb,
                    (_, ColorModel::YbrFull422) => ColorModel::YbrFull,
                    (_, color) => color,
                };
                let layout = Layout {
                    header,
                    color,
                    planar: false,
                    frame_len: header.pixels()
                        * header.samples as usize
                        * header.bytes_per_sample(),
                };
                (Cow::Owned(data), layout)
            }
        })
    }
}

/// Loads every frame of the DICOM file open in `file`.
pub(crate) fn load(path: &Path, file: File, file_bytes: u64) -> Result<LoadedInput, InputError> {
    let image = open_image(path, file, file_bytes)?;
    let (data, layout) = image.pixels(path)?;
    let spacing = spacing(&image.obj);
    let frames = layout
        .to_frames(path, &image.obj, &data)?
        .into_iter()
        .map(|f| f.with_spacing(spacing))
        .collect();
    Ok(LoadedInput {
        frames,
        kind: InputKind::Dicom {
            transfer_syntax: image.ts_uid.clone(),
            photometric: image.header.photometric.clone(),
            frame_count: image.header.frames,
            frame_time_ms: frame_time_ms(&image.obj),
        },
    })
}

/// A monochrome DICOM image as modality values, with the patient geometry a volume needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MonoImage {
    pub(crate) cols: u32,
    pub(crate) rows: u32,
    pub(crate) frames: u32,
    /// Stored values through Rescale Slope/Intercept (MONOCHROME1 is not inverted: that is
    /// presentation), row-major, frame after frame.
    pub(crate) values: Vec<f32>,
    /// Image Position (Patient): the centre of the first transmitted pixel, in mm (LPS).
    pub(crate) position: [f64; 3],
    /// Image Orientation (Patient): the unit direction of a row (increasing column) and of a
    /// column (increasing row), orthogonalised.
    pub(crate) orientation: [[f64; 3]; 2],
    /// Pixel spacing, with the fallbacks of [`spacing`].
    pub(crate) spacing: PixelSpacing,
}

/// Loads the DICOM file open in `file` as monochrome modality values with its geometry.
/// Colour images and files without position, orientation or pixel spacing are refused.
pub(crate) fn load_mono(path: &Path, file: File, file_bytes: u64) -> Result<MonoImage, InputError> {
    let image = open_image(path, file, file_bytes)?;
    let header = &image.header;
    if !matches!(header.color, ColorModel::Mono { .. }) {
        return Err(InputError::InvalidAttribute {
            path: path.to_path_buf(),
            attribute: "Photometric Interpretation (0028,0004)",
            value: format!("{:?}", header.photometric),
            expected: "MONOCHROME1 or MONOCHROME2 for a volume slice",
        });
    }
    let position = floats::<3>(
        path,
        &image.obj,
        tags::IMAGE_POSITION_PATIENT,
        "Image Position (Patient) (0020,0032)",
        "3 finite numbers",
    )?;
    let orientation = orientation(path, &image.obj)?;
    let spacing = spacing(&image.obj).ok_or_else(|| InputError::MissingAttribute {
        path: path.to_path_buf(),
        attribute: "Pixel Spacing (0028,0030)",
    })?;
    let (data, layout) = image.pixels(path)?;
    Ok(MonoImage {
        cols: header.cols,
        rows: header.rows,
        frames: header.frames,
        values: layout.modality_values(&data),
        position,
        orientation,
        spacing,
    })
}

/// The cine frame interval in ms, from the first of Frame Time, Cine Rate and Recommended
/// Display Frame Rate that holds a positive number.
fn frame_time_ms(obj: &InMemDicomObject) -> Option<f64> {
    let positive = |tag| first_float(obj, tag).filter(|v| *v > 0.0);
    positive(tags::FRAME_TIME)
        .or_else(|| positive(tags::CINE_RATE).map(|rate| 1000.0 / rate))
        .or_else(|| positive(tags::RECOMMENDED_DISPLAY_FRAME_RATE).map(|rate| 1000.0 / rate))
}

/// Steps 1 and 2: scans and parses the file, refusing transfer syntaxes this build does not
/// decode.
fn open(
    path: &Path,
    mut file: File,
    file_bytes: u64,
) -> Result<(DefaultDicomObject, Codec), InputError> {
    let dicom_err = |reason: String| InputError::Dicom {
        path: path.to_path_buf(),
        reason,
    };
    let io_err = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    let scan_err = |stop: Stop| match stop {
        Stop::Overrun(detail) => Some(InputError::Truncated {
            path: path.to_path_buf(),
            file_bytes,
            reason: detail,
        }),
        Stop::TooDeep(detail) | Stop::Misaligned(detail) => Some(dicom_err(detail)),
        Stop::Lost => None,
    };

    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let dataset_start = match Scan::meta(BufReader::new(&mut file), file_bytes) {
        Ok(start) => Some(start),
        Err(stop) => match scan_err(stop) {
            Some(e) => return Err(e),
            None => None,
        },
    };
    file.seek(SeekFrom::Start(128)).map_err(io_err)?;
    let meta = FileMetaTable::from_reader(BufReader::new(&mut file))
        .map_err(|e| dicom_err(format!("file meta group: {}", error_chain(&e))))?;
    let ts_uid = meta.transfer_syntax();
    let (ts_name, codec) = transfer_syntax(ts_uid);
    let codec = codec.ok_or_else(|| InputError::UnsupportedTransferSyntax {
        path: path.to_path_buf(),
        uid: ts_uid.to_string(),
        name: ts_name.to_string(),
    })?;

    if let (Some(start), false) = (dataset_start, ts_uid == DEFLATED) {
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let explicit = ts_uid != IMPLICIT;
        let scanned = Scan::dataset_at(BufReader::new(&mut file), start, file_bytes, explicit);
        if let Some(e) = scanned.err().and_then(scan_err) {
            return Err(e);
        }
    }

    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let parsed = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(BufReader::new(&mut file));
    match parsed {
        Ok(obj) => Ok((obj, codec)),
        Err(e) => {
            let reason = error_chain(&e);
            file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            let header_only = OpenFileOptions::new()
                .read_preamble(ReadPreamble::Always)
                .read_until(tags::PIXEL_DATA)
                .from_reader(BufReader::new(&mut file));
            Err(match header_only {
                Ok(_) => InputError::Truncated {
                    path: path.to_path_buf(),
                    file_bytes,
                    reason,
                },
                Err(_) => dicom_err(reason),
            })
        }
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------------

/// An integer attribute: `Ok(None)` when absent or empty.
fn int_attr(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    attribute: &'static str,
) -> Result<Option<i64>, InputError> {
    let Some(element) = obj.get(tag) else {
        return Ok(None);
    };
    let blank = element.to_str().is_ok_and(|s| {
        s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .is_empty()
    });
    if element.value().multiplicity() == 0 || blank {
        return Ok(None);
    }
    element
        .to_int::<i64>()
        .map(Some)
        .map_err(|_| InputError::InvalidAttribute {
            path: path.to_path_buf(),
            attribute,
            value: shown(element),
            expected: "an integer",
        })
}

/// The value of an element as text, for messages.
fn shown(element: &InMemElement) -> String {
    match element.to_str() {
        Ok(s) => format!("{:?}", s.trim_end_matches(['\0', ' '])),
        Err(_) => format!("a value of VR {}", element.vr()),
    }
}

fn required(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    attribute: &'static str,
) -> Result<i64, InputError> {
    int_attr(path, obj, tag, attribute)?.ok_or_else(|| InputError::MissingAttribute {
        path: path.to_path_buf(),
        attribute,
    })
}

/// An integer attribute within `range`, with a default when absent.
fn ranged(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    attribute: &'static str,
    default: Option<i64>,
    range: std::ops::RangeInclusive<i64>,
    expected: &'static str,
) -> Result<u32, InputError> {
    let value = match int_attr(path, obj, tag, attribute)? {
        Some(v) => v,
        None => default.ok_or_else(|| InputError::MissingAttribute {
            path: path.to_path_buf(),
            attribute,
        })?,
    };
    if !range.contains(&value) {
        return Err(InputError::InvalidAttribute {
            path: path.to_path_buf(),
            attribute,
            value: value.to_string(),
            expected,
        });
    }
    // every range used here lies within u32
    Ok(value as u32)
}

/// The first value of a decimal attribute, when present, parsable and finite.
fn first_float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    let values = obj.get(tag)?.to_multi_float64().ok()?;
    values.first().copied().filter(|v| v.is_finite())
}

fn text_attr(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = obj.get(tag)?;
    let text = element.to_str().ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!text.is_empty()).then(|| text.to_string())
}

fn read_header(path: &Path, obj: &InMemDicomObject, codec: Codec) -> Result<Header, InputError> {
    let unsupported = |reason: String| InputError::UnsupportedPixelFormat {
        path: path.to_path_buf(),
        reason,
    };
    let rows = required(path, obj, tags::ROWS, "Rows (0028,0010)")?;
    let cols = required(path, obj, tags::COLUMNS, "Columns (0028,0011)")?;
    let frames = ranged(
        path,
        obj,
        tags::NUMBER_OF_FRAMES,
        "Number of Frames (0028,0008)",
        Some(1),
        0..=i64::from(u32::MAX),
        "a count of frames",
    )?;
    let (rows, cols) = match (u32::try_from(rows), u32::try_from(cols)) {
        (Ok(r), Ok(c)) => (r, c),
        _ => {
            return Err(InputError::InvalidAttribute {
                path: path.to_path_buf(),
                attribute: "Rows/Columns (0028,0010/0011)",
                value: format!("{rows}/{cols}"),
                expected: "non-negative sizes",
            })
        }
    };
    if rows == 0 || cols == 0 || frames == 0 {
        return Err(InputError::ZeroSize {
            path: path.to_path_buf(),
            cols,
            rows,
            frames,
        });
    }
    let samples = ranged(
        path,
        obj,
        tags::SAMPLES_PER_PIXEL,
        "Samples per Pixel (0028,0002)",
        Some(1),
        1..=u16::MAX.into(),
        "a sample count",
    )?;
    if samples != 1 && samples != 3 {
        return Err(unsupported(format!(
            "{samples} samples per pixel (only 1 and 3 are converted)"
        )));
    }
    let bits_allocated = required(
        path,
        obj,
        tags::BITS_ALLOCATED,
        "Bits Allocated (0028,0100)",
    )?;
    if bits_allocated != 8 && bits_allocated != 16 {
        return Err(unsupported(format!(
            "Bits Allocated is {bits_allocated} (only 8 and 16 are converted)"
        )));
    }
    let bits_allocated = bits_allocated as u32;
    let bits_stored = ranged(
        path,
        obj,
        tags::BITS_STORED,
        "Bits Stored (0028,0101)",
        Some(bits_allocated.into()),
        1..=bits_allocated.into(),
        "1 to Bits Allocated",
    )?;
    let signed = ranged(
        path,
        obj,
        tags::PIXEL_REPRESENTATION,
        "Pixel Representation (0028,0103)",
        Some(0),
        0..=1,
        "0 (unsigned) or 1 (signed)",
    )? == 1;
    let planar = ranged(
        path,
        obj,
        tags::PLANAR_CONFIGURATION,
        "Planar Configuration (0028,0006)",
        Some(0),
        0..=1,
        "0 (interleaved) or 1 (planes)",
    )? == 1;

    let photometric = text_attr(obj, tags::PHOTOMETRIC_INTERPRETATION)
        .unwrap_or_else(|| if samples == 1 { "MONOCHROME2" } else { "RGB" }.to_string());
    let color = match (photometric.as_str(), samples) {
        ("MONOCHROME1", 1) => ColorModel::Mono { invert: true },
        ("MONOCHROME2", 1) => ColorModel::Mono { invert: false },
        ("PALETTE COLOR", 1) => ColorModel::Palette,
        ("RGB", 3) => ColorModel::Rgb,
        ("YBR_FULL", 3) => ColorModel::YbrFull,
        ("YBR_FULL_422", 3) => ColorModel::YbrFull422,
        _ => {
            return Err(InputError::UnsupportedPhotometric {
                path: path.to_path_buf(),
                photometric,
                samples,
            })
        }
    };
    if signed && !matches!(color, ColorModel::Mono { .. }) {
        return Err(unsupported(format!("signed samples with {photometric}")));
    }
    if color == ColorModel::YbrFull422
        && codec == Codec::Native
        && (bits_allocated != 8 || planar || cols % 2 == 1)
    {
        return Err(unsupported(format!(
            "native YBR_FULL_422 needs 8-bit interleaved samples and an even width, \
             found {bits_allocated} bits, planar configuration {}, {cols} columns",
            u8::from(planar)
        )));
    }

    if codec == Codec::Jpeg && bits_allocated != 8 {
        return Err(unsupported(format!(
            "JPEG Baseline holds 8-bit samples, Bits Allocated is {bits_allocated}"
        )));
    }

    let slope = first_float(obj, tags::RESCALE_SLOPE).filter(|s| *s != 0.0);
    let intercept = first_float(obj, tags::RESCALE_INTERCEPT);
    let function = match text_attr(obj, tags::VOILUT_FUNCTION).as_deref() {
        Some("LINEAR_EXACT") => VoiFunction::LinearExact,
        Some("SIGMOID") => VoiFunction::Sigmoid,
        _ => VoiFunction::Linear,
    };
    let window = match (
        first_float(obj, tags::WINDOW_CENTER),
        first_float(obj, tags::WINDOW_WIDTH),
    ) {
        (Some(center), Some(width)) => {
            let usable = match function {
                VoiFunction::Linear => width >= 1.0,
                _ => width > 0.0,
            };
            usable.then_some(Window {
                center,
                width,
                function,
            })
        }
        _ => None,
    };

    Ok(Header {
        rows,
        cols,
        frames,
        samples,
        bits_allocated,
        bits_stored,
        signed,
        planar,
        photometric,
        color,
        slope: slope.unwrap_or(1.0),
        intercept: intercept.unwrap_or(0.0),
        window,
    })
}

// ---------------------------------------------------------------------------------------------
// Spacing
// ---------------------------------------------------------------------------------------------

/// Pixel spacing in mm: Pixel Spacing, the shared functional groups' Pixel Measures, Imager
/// Pixel Spacing, then the first ultrasound region calibrated in cm. Unusable values (zero,
/// negative, unparsable) are skipped.
fn spacing(obj: &InMemDicomObject) -> Option<PixelSpacing> {
    spacing_pair(obj, tags::PIXEL_SPACING)
        .or_else(|| {
            let groups = obj.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)?.items()?;
            let measures = groups
                .first()?
                .get(tags::PIXEL_MEASURES_SEQUENCE)?
                .items()?;
            spacing_pair(measures.first()?, tags::PIXEL_SPACING)
        })
        .or_else(|| spacing_pair(obj, tags::IMAGER_PIXEL_SPACING))
        .or_else(|| ultrasound_spacing(obj))
}

fn spacing_pair(obj: &InMemDicomObject, tag: Tag) -> Option<PixelSpacing> {
    let values = obj.get(tag)?.to_multi_float64().ok()?;
    match values.as_slice() {
        &[row_mm, col_mm, ..] if positive(row_mm) && positive(col_mm) => {
            Some(PixelSpacing { row_mm, col_mm })
        }
        _ => None,
    }
}

/// From the Sequence of Ultrasound Regions: the first region whose physical units are cm in
/// both directions (code 3), its Physical Delta X/Y converted to mm.
fn ultrasound_spacing(obj: &InMemDicomObject) -> Option<PixelSpacing> {
    const CENTIMETRES: i64 = 3;
    let regions = obj.get(tags::SEQUENCE_OF_ULTRASOUND_REGIONS)?.items()?;
    regions.iter().find_map(|region| {
        let units = |tag| region.get(tag)?.to_int::<i64>().ok();
        if units(tags::PHYSICAL_UNITS_X_DIRECTION)? != CENTIMETRES
            || units(tags::PHYSICAL_UNITS_Y_DIRECTION)? != CENTIMETRES
        {
            return None;
        }
        let delta = |tag| region.get(tag)?.to_float64().ok().map(f64::abs);
        let (dx, dy) = (
            delta(tags::PHYSICAL_DELTA_X)?,
            delta(tags::PHYSICAL_DELTA_Y)?,
        );
        (positive(dx) && positive(dy)).then_some(PixelSpacing {
            row_mm: dy * 10.0,
            col_mm: dx * 10.0,
        })
    })
}

fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

// ---------------------------------------------------------------------------------------------
// Patient geometry
// ---------------------------------------------------------------------------------------------

/// A required attribute of exactly `N` finite decimal values (`expected` says so in errors).
fn floats<const N: usize>(
    path: &Path,
    obj: &InMemDicomObject,
    tag: Tag,
    attribute: &'static str,
    expected: &'static str,
) -> Result<[f64; N], InputError> {
    let element = obj.get(tag).ok_or_else(|| InputError::MissingAttribute {
        path: path.to_path_buf(),
        attribute,
    })?;
    element
        .to_multi_float64()
        .ok()
        .and_then(|values| <[f64; N]>::try_from(values).ok())
        .filter(|values| values.iter().all(|v| v.is_finite()))
        .ok_or_else(|| InputError::InvalidAttribute {
            path: path.to_path_buf(),
            attribute,
            value: shown(element),
            expected,
        })
}

/// Image Orientation (Patient): two unit vectors (within 1e-3) at right angles (cosine within
/// 1e-3), returned normalised and exactly orthogonal.
fn orientation(path: &Path, obj: &InMemDicomObject) -> Result<[[f64; 3]; 2], InputError> {
    const ATTRIBUTE: &str = "Image Orientation (Patient) (0020,0037)";
    const TOLERANCE: f64 = 1e-3;
    let [rx, ry, rz, cx, cy, cz] = floats::<6>(
        path,
        obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        ATTRIBUTE,
        "6 finite numbers",
    )?;
    let (row, col) = ([rx, ry, rz], [cx, cy, cz]);
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let unit = |v: [f64; 3]| (dot(v, v).sqrt() - 1.0).abs() <= TOLERANCE;
    if !unit(row) || !unit(col) || dot(row, col).abs() > TOLERANCE {
        return Err(InputError::InvalidAttribute {
            path: path.to_path_buf(),
            attribute: ATTRIBUTE,
            value: format!("{rx}\\{ry}\\{rz}\\{cx}\\{cy}\\{cz}"),
            expected: "two orthogonal unit vectors",
        });
    }
    let scale = |v: [f64; 3], k: f64| [v[0] * k, v[1] * k, v[2] * k];
    let row = scale(row, 1.0 / dot(row, row).sqrt());
    let along = dot(col, row);
    let col = [
        col[0] - along * row[0],
        col[1] - along * row[1],
        col[2] - along * row[2],
    ];
    let col = scale(col, 1.0 / dot(col, col).sqrt());
    Ok([row, col])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_the_standard() {
        let w = Window {
            center: 40.0,
            width: 400.0,
            function: VoiFunction::Linear,
        };
        assert_eq!(w.apply(-200.0), 0.0);
        assert_eq!(w.apply(300.0), 255.0);
        assert!((w.apply(39.5) - 127.5).abs() < 1e-9);
    }
}
