//! Pixel data to one byte buffer holding every frame: native data borrowed after a length
//! check, encapsulated data (RLE Lossless, JPEG Baseline) checked fragment by fragment and
//! then decoded by dicom-pixeldata.
//!
//! The checks exist because dicom-pixeldata's codecs trust the data: an RLE header with a
//! huge segment count makes it allocate and slice out of bounds, an RLE segment that decodes
//! short or a JPEG frame larger than Rows x Columns makes it index out of bounds. What the
//! checks miss, [`guard_panic`] turns into an error.

use std::borrow::Cow;
use std::path::Path;

use dicom_object::mem::InMemElement;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;

use super::{error_chain, Codec, Header};
use crate::input::{count, guard_panic, InputError};

pub(super) fn native_pixels<'a>(
    path: &Path,
    element: &'a InMemElement,
    header: &Header,
    ts_uid: &str,
) -> Result<Cow<'a, [u8]>, InputError> {
    if element.fragments().is_some() {
        return Err(InputError::Dicom {
            path: path.to_path_buf(),
            reason: format!(
                "pixel data is encapsulated, but transfer syntax {ts_uid} stores it natively"
            ),
        });
    }
    let data = element.to_bytes().map_err(|e| InputError::Dicom {
        path: path.to_path_buf(),
        reason: format!("pixel data: {}", error_chain(&e)),
    })?;
    let expected = header.native_frame_len() * header.frames as usize;
    if data.len() < expected {
        return Err(InputError::PixelDataLength {
            path: path.to_path_buf(),
            found: data.len(),
            expected,
            frames: header.frames,
            cols: header.cols,
            rows: header.rows,
            samples: header.samples,
            bits: header.bits_allocated,
        });
    }
    Ok(data)
}

/// Checks the encapsulated fragments, then decodes all frames with dicom-pixeldata.
///
/// Decoding every frame in one call matters for JPEG: dicom-pixeldata's per-frame path copies
/// all fragments for each frame, which is quadratic in the length of a cine loop.
pub(super) fn encapsulated_pixels(
    path: &Path,
    obj: &DefaultDicomObject,
    element: &InMemElement,
    header: &Header,
    codec: Codec,
) -> Result<Vec<u8>, InputError> {
    let frames = header.frames;
    let fail = |frame: Option<u32>, reason: String| InputError::PixelDecode {
        path: path.to_path_buf(),
        frame,
        frames,
        reason,
    };
    let Some(fragments) = element.fragments() else {
        return Err(InputError::Dicom {
            path: path.to_path_buf(),
            reason: "pixel data is stored natively, but the transfer syntax is encapsulated"
                .to_string(),
        });
    };
    if fragments.len() < frames as usize {
        return Err(fail(
            None,
            format!(
                "pixel data holds {} fragments, fewer than its {frames} frames",
                fragments.len()
            ),
        ));
    }
    match codec {
        Codec::Rle => {
            if fragments.len() != frames as usize {
                return Err(fail(
                    None,
                    format!(
                        "RLE Lossless needs one fragment per frame, found {} fragments for \
                         {frames} frames",
                        fragments.len()
                    ),
                ));
            }
            let segments = header.samples as usize * header.bytes_per_sample();
            for (i, fragment) in fragments.iter().enumerate() {
                check_rle_fragment(fragment, segments, header.pixels())
                    .map_err(|reason| fail(Some(i as u32), reason))?;
            }
        }
        Codec::Jpeg => {
            // With one fragment per frame each frame's header can be checked; frames split
            // over several fragments are left to the decoder.
            if fragments.len() == frames as usize {
                for (i, fragment) in fragments.iter().enumerate() {
                    check_jpeg_frame(fragment, header)
                        .map_err(|reason| fail(Some(i as u32), reason))?;
                }
            }
        }
        // native data never reaches here; nothing to check if it did
        Codec::Native => {}
    }

    let decoded = guard_panic(|| obj.decode_pixel_data().map(|px| px.into_data()))
        .map_err(|reason| fail(None, reason))?
        .map_err(|e| fail(None, error_chain(&e)))?;
    let frame_len = header.pixels() * header.samples as usize * header.bytes_per_sample();
    let expected = frame_len * frames as usize;
    if decoded.len() != expected {
        return Err(fail(
            None,
            format!(
                "decoded pixel data holds {} bytes, {} of {}x{}x{} at {} bits \
                 need {expected}",
                decoded.len(),
                count(frames, "frame"),
                header.cols,
                header.rows,
                header.samples,
                header.bits_allocated
            ),
        ));
    }
    Ok(decoded)
}

/// Validates one RLE Lossless fragment (PS3.5 G.3) so that decoding cannot index out of
/// bounds: the 64-byte header, its segment count and offsets, and that every segment's
/// PackBits runs yield at least one byte per pixel.
fn check_rle_fragment(fragment: &[u8], segments: usize, pixels: usize) -> Result<(), String> {
    if fragment.len() < 64 {
        return Err(format!(
            "RLE fragment holds {} bytes, less than its 64-byte header",
            fragment.len()
        ));
    }
    let word = |i: usize| {
        u32::from_le_bytes([
            fragment[4 * i],
            fragment[4 * i + 1],
            fragment[4 * i + 2],
            fragment[4 * i + 3],
        ]) as usize
    };
    let count = word(0);
    if count != segments {
        return Err(format!(
            "RLE header lists {count} segments, the image needs {segments}"
        ));
    }
    let mut offsets: Vec<usize> = (1..=count).map(word).collect();
    offsets.push(fragment.len());
    for i in 0..count {
        let (start, end) = (offsets[i], offsets[i + 1]);
        if start < 64 || start > end || end > fragment.len() {
            return Err(format!(
                "RLE segment {} spans bytes {start}..{end} of a {}-byte fragment",
                i + 1,
                fragment.len()
            ));
        }
        let produced = packbits_len(&fragment[start..end], pixels);
        if produced < pixels {
            return Err(format!(
                "RLE segment {} decodes to {produced} bytes, the image needs {pixels}",
                i + 1
            ));
        }
    }
    Ok(())
}

/// Bytes a PackBits segment decodes to (stopping once `enough` is reached), counting as the
/// dicom-rs decoder does: a literal run cut short yields what is there, a repeat run without
/// its byte ends the segment.
fn packbits_len(data: &[u8], enough: usize) -> usize {
    let (mut i, mut out) = (0, 0);
    while i < data.len() && out < enough {
        let h = data[i] as i8;
        i += 1;
        match h {
            0..=127 => {
                let n = (h as usize + 1).min(data.len() - i);
                out += n;
                i += n;
            }
            -127..=-1 => {
                if i >= data.len() {
                    break;
                }
                out += (1 - h as isize) as usize;
                i += 1;
            }
            -128 => {}
        }
    }
    out
}

/// Checks a JPEG frame's SOF header against the image attributes.
fn check_jpeg_frame(fragment: &[u8], header: &Header) -> Result<(), String> {
    let Some(sof) = jpeg_sof(fragment) else {
        return Err("no JPEG frame header (SOI then SOF marker) in the fragment".to_string());
    };
    let rows_ok = sof.height == 0 || u32::from(sof.height) == header.rows;
    if !rows_ok
        || u32::from(sof.width) != header.cols
        || u32::from(sof.components) != header.samples
        || sof.precision != 8
    {
        return Err(format!(
            "JPEG frame is {}x{} with {} components at {} bits, the data set says {}x{} with {} \
             samples at 8 bits",
            sof.width,
            sof.height,
            sof.components,
            sof.precision,
            header.cols,
            header.rows,
            header.samples
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JpegSof {
    precision: u8,
    height: u16,
    width: u16,
    components: u8,
}

/// The frame header of a JPEG stream: scans the markers after SOI up to the first SOF.
fn jpeg_sof(data: &[u8]) -> Option<JpegSof> {
    if !data.starts_with(&[0xff, 0xd8]) {
        return None;
    }
    let mut i = 2;
    loop {
        while *data.get(i)? != 0xff {
            i += 1;
        }
        while *data.get(i)? == 0xff {
            i += 1;
        }
        let marker = *data.get(i)?;
        i += 1;
        match marker {
            0x01 | 0xd0..=0xd8 => continue,
            0xd9 | 0xda => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
        let is_sof = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_sof {
            let body = data.get(i + 2..i + 8)?;
            return Some(JpegSof {
                precision: body[0],
                height: u16::from_be_bytes([body[1], body[2]]),
                width: u16::from_be_bytes([body[3], body[4]]),
                components: body[5],
            });
        }
        i += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_counts_literals_runs_and_noops() {
        // literal of 3, run of 4, no-op, literal cut short (2 of 5 bytes present)
        let data = [2, 1, 2, 3, 0xfd, 9, 0x80, 4, 7, 8];
        assert_eq!(packbits_len(&data, usize::MAX), 3 + 4 + 2);
        assert_eq!(packbits_len(&[0xfd], usize::MAX), 0, "run without its byte");
        assert_eq!(packbits_len(&[0x81, 0], 10), 128);
    }

    #[test]
    fn rle_header_with_absurd_segment_count_is_refused() {
        let mut fragment = vec![0u8; 80];
        fragment[..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let err = check_rle_fragment(&fragment, 1, 16).unwrap_err();
        assert!(err.contains("lists 4294967280 segments"), "{err}");
        assert!(check_rle_fragment(&[1, 0, 0], 1, 16).is_err());
    }

    #[test]
    fn rle_segment_offsets_must_stay_inside_the_fragment() {
        let mut fragment = vec![0u8; 64];
        fragment[..4].copy_from_slice(&1u32.to_le_bytes());
        fragment[4..8].copy_from_slice(&500u32.to_le_bytes());
        let err = check_rle_fragment(&fragment, 1, 16).unwrap_err();
        assert!(err.contains("500..64"), "{err}");
        fragment[4..8].copy_from_slice(&64u32.to_le_bytes());
        fragment.extend_from_slice(&[0xf1, 5]); // run of 16
        assert_eq!(check_rle_fragment(&fragment, 1, 16), Ok(()));
        // two segments, the first one's end (the second's start) beyond the fragment
        let mut two = fragment.clone();
        two[..4].copy_from_slice(&2u32.to_le_bytes());
        two[8..12].copy_from_slice(&9000u32.to_le_bytes());
        let err = check_rle_fragment(&two, 2, 16).unwrap_err();
        assert!(err.contains("64..9000"), "{err}");
    }

    #[test]
    fn jpeg_sof_is_found_after_other_segments() {
        let jpeg = [
            0xff, 0xd8, // SOI
            0xff, 0xe0, 0x00, 0x04, 0x4a, 0x46, // APP0, 2 bytes of payload
            0xff, 0xc0, 0x00, 0x0b, 8, 0x00, 0x30, 0x00, 0x40, 3, // SOF0 48x64x3
        ];
        assert_eq!(
            jpeg_sof(&jpeg),
            Some(JpegSof {
                precision: 8,
                height: 48,
                width: 64,
                components: 3
            })
        );
        assert_eq!(jpeg_sof(&jpeg[..12]), None, "cut inside SOF");
        assert_eq!(
            jpeg_sof(&[0xff, 0xd8, 0xff, 0xda]),
            None,
            "scan before frame header"
        );
        assert_eq!(jpeg_sof(b"not a jpeg"), None);
    }
}
