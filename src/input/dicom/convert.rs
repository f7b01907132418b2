//! Decoded samples to RGB8 frames: monochrome through rescale, window or min–max (one lookup
//! table per file), MONOCHROME1 inverted, PALETTE COLOR through its lookup tables, RGB and
//! YBR (interleaved or planar, 8 or 16 bits) to RGB8.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, Tag};

use super::{shown, ColorModel, Header};
use crate::frame::Frame;
use crate::input::InputError;

/// How the frames of `data` are laid out after decoding.
pub(super) struct Layout<'h> {
    pub(super) header: &'h Header,
    pub(super) color: ColorModel,
    pub(super) planar: bool,
    pub(super) frame_len: usize,
}

impl Layout<'_> {
    pub(super) fn to_frames(
        &self,
        path: &Path,
        obj: &InMemDicomObject,
        data: &[u8],
    ) -> Result<Vec<Frame>, InputError> {
        let h = self.header;
        let frames = data.chunks_exact(self.frame_len).take(h.frames as usize);
        let built: Result<Vec<Frame>, _> = match self.color {
            ColorModel::Mono { invert } => {
                let lut = self.mono_lut(data, invert);
                let offset = sample_offset(h);
                frames
                    .map(|f| {
                        let gray: Vec<u8> = Samples::new(h, f)
                            .map(|v| lut[(v - offset) as usize])
                            .collect();
                        Frame::from_gray(h.cols, h.rows, &gray)
                    })
                    .collect()
            }
            ColorModel::Palette => {
                let palette = Palette::read(path, obj)?;
                frames
                    .map(|f| {
                        let rgb: Vec<u8> = Samples::new(h, f)
                            .flat_map(|v| palette.rgb(v as u32))
                            .collect();
                        Frame::from_rgb(h.cols, h.rows, rgb)
                    })
                    .collect()
            }
            ColorModel::Rgb | ColorModel::YbrFull => frames
                .map(|f| Frame::from_rgb(h.cols, h.rows, self.color_frame(f)))
                .collect(),
            ColorModel::YbrFull422 => frames
                .map(|f| {
                    let rgb = f
                        .chunks_exact(4)
                        .flat_map(|q| {
                            let a = ybr_to_rgb(q[0], q[2], q[3]);
                            let b = ybr_to_rgb(q[1], q[2], q[3]);
                            [a[0], a[1], a[2], b[0], b[1], b[2]]
                        })
                        .collect();
                    Frame::from_rgb(h.cols, h.rows, rgb)
                })
                .collect(),
        };
        built.map_err(|source| InputError::Frame {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Every frame's samples through Rescale Slope/Intercept, frame after frame.
    pub(super) fn modality_values(&self, data: &[u8]) -> Vec<f32> {
        let h = self.header;
        data.chunks_exact(self.frame_len)
            .take(h.frames as usize)
            .flat_map(|f| Samples::new(h, f))
            .map(|v| h.modality(v) as f32)
            .collect()
    }

    /// Lookup table from stored value (minus [`sample_offset`]) to display gray.
    fn mono_lut(&self, data: &[u8], invert: bool) -> Vec<u8> {
        let h = self.header;
        let offset = sample_offset(h);
        let size = 1usize << h.bits_stored;
        let modality = |v: i32| h.modality(v);
        let identity = !h.signed && h.bits_stored == 8 && h.slope == 1.0 && h.intercept == 0.0;
        let map: Box<dyn Fn(i32) -> f64> = if let Some(window) = h.window {
            Box::new(move |v| window.apply(modality(v)))
        } else if identity {
            Box::new(f64::from)
        } else {
            // min–max over every frame, so all frames share one mapping
            let used = &data[..self.frame_len * h.frames as usize];
            let (lo, hi) = used
                .chunks_exact(self.frame_len)
                .flat_map(|f| Samples::new(h, f))
                .fold((i32::MAX, i32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let (a, b) = (modality(lo), modality(hi));
            let (lo, hi) = (a.min(b), a.max(b));
            if hi > lo {
                Box::new(move |v| (modality(v) - lo) / (hi - lo) * 255.0)
            } else {
                Box::new(|_| 0.0)
            }
        };
        (0..size)
            .map(|i| {
                let g = map(i as i32 + offset).round().clamp(0.0, 255.0) as u8;
                if invert {
                    255 - g
                } else {
                    g
                }
            })
            .collect()
    }

    /// An RGB or YBR_FULL frame (8 or 16 bits, interleaved or planar) as RGB8.
    fn color_frame(&self, f: &[u8]) -> Vec<u8> {
        let h = self.header;
        let n = h.pixels();
        let bytes = h.bytes_per_sample();
        let max = (1u32 << h.bits_stored) - 1;
        let sample = |pixel: usize, channel: usize| -> u8 {
            let index = if self.planar {
                channel * n + pixel
            } else {
                pixel * 3 + channel
            };
            let raw = if bytes == 1 {
                u32::from(f[index])
            } else {
                u32::from(u16::from_le_bytes([f[2 * index], f[2 * index + 1]]))
            };
            let v = raw & max;
            if h.bits_stored == 8 {
                v as u8
            } else {
                ((v * 255 + max / 2) / max) as u8
            }
        };
        let ybr = self.color == ColorModel::YbrFull;
        (0..n)
            .flat_map(|p| {
                let (a, b, c) = (sample(p, 0), sample(p, 1), sample(p, 2));
                if ybr {
                    ybr_to_rgb(a, b, c)
                } else {
                    [a, b, c]
                }
            })
            .collect()
    }
}

/// The smallest stored value: `-2^(bits_stored-1)` for signed data, else 0.
fn sample_offset(h: &Header) -> i32 {
    if h.signed {
        -(1 << (h.bits_stored - 1))
    } else {
        0
    }
}

/// The single-channel samples of one frame: masked to Bits Stored, sign-extended when signed.
struct Samples<'a> {
    data: &'a [u8],
    bytes: usize,
    bits_stored: u32,
    signed: bool,
    index: usize,
}

impl<'a> Samples<'a> {
    fn new(h: &Header, data: &'a [u8]) -> Samples<'a> {
        Samples {
            data,
            bytes: h.bytes_per_sample(),
            bits_stored: h.bits_stored,
            signed: h.signed,
            index: 0,
        }
    }
}

impl Iterator for Samples<'_> {
    type Item = i32;

    fn next(&mut self) -> Option<i32> {
        let raw = match self.bytes {
            1 => u32::from(*self.data.get(self.index)?),
            _ => {
                let pair = self.data.get(self.index..self.index + 2)?;
                u32::from(u16::from_le_bytes([pair[0], pair[1]]))
            }
        };
        self.index += self.bytes;
        let v = raw & ((1u32 << self.bits_stored) - 1);
        let sign = 1u32 << (self.bits_stored - 1);
        Some(if self.signed && v & sign != 0 {
            v as i32 - (1i32 << self.bits_stored)
        } else {
            v as i32
        })
    }
}

/// YCbCr (full range, PS3.3 C.7.6.3.1.2) to RGB.
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        clamp(y + 1.402 * cr),
        clamp(y - 0.344_136 * cb - 0.714_136 * cr),
        clamp(y + 1.772 * cb),
    ]
}

/// The three lookup tables of a PALETTE COLOR image, reduced to 8 bits.
struct Palette {
    first: i64,
    channels: [Vec<u8>; 3],
}

impl Palette {
    const TAGS: [(Tag, Tag, Tag, &'static str, &'static str); 3] = [
        (
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "Red Palette Color Lookup Table Descriptor (0028,1101)",
            "Red Palette Color Lookup Table Data (0028,1201)",
        ),
        (
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "Green Palette Color Lookup Table Descriptor (0028,1102)",
            "Green Palette Color Lookup Table Data (0028,1202)",
        ),
        (
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
            "Blue Palette Color Lookup Table Descriptor (0028,1103)",
            "Blue Palette Color Lookup Table Data (0028,1203)",
        ),
    ];

    fn read(path: &Path, obj: &InMemDicomObject) -> Result<Palette, InputError> {
        let invalid = |attribute, value: String, expected| InputError::InvalidAttribute {
            path: path.to_path_buf(),
            attribute,
            value,
            expected,
        };
        let mut first = 0;
        let mut channels: [Vec<u8>; 3] = Default::default();
        for (channel, (desc_tag, data_tag, segmented_tag, desc_name, data_name)) in
            channels.iter_mut().zip(Palette::TAGS)
        {
            let desc = obj.get(desc_tag).ok_or(InputError::MissingAttribute {
                path: path.to_path_buf(),
                attribute: desc_name,
            })?;
            let values = desc.to_multi_int::<i64>().unwrap_or_default();
            let &[entries, first_mapped, bits] = values.as_slice() else {
                return Err(invalid(desc_name, shown(desc), "three integers"));
            };
            let entries = if entries == 0 { 65_536 } else { entries };
            if !(1..=65_536).contains(&entries) || !(bits == 8 || bits == 16) {
                return Err(invalid(
                    desc_name,
                    format!("{entries}\\{first_mapped}\\{bits}"),
                    "up to 65536 entries of 8 or 16 bits",
                ));
            }
            let Some(data) = obj.get(data_tag) else {
                if obj.get(segmented_tag).is_some() {
                    return Err(InputError::UnsupportedPixelFormat {
                        path: path.to_path_buf(),
                        reason: "segmented palette colour lookup tables are not converted"
                            .to_string(),
                    });
                }
                return Err(InputError::MissingAttribute {
                    path: path.to_path_buf(),
                    attribute: data_name,
                });
            };
            let bytes = data
                .to_bytes()
                .map_err(|_| invalid(data_name, format!("a value of VR {}", data.vr()), "bytes"))?;
            let entries = entries as usize;
            let words = |i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
            *channel = if bits == 16 && bytes.len() >= 2 * entries {
                (0..entries).map(|i| (words(i) >> 8) as u8).collect()
            } else if bits == 8 && bytes.len() >= 2 * entries {
                // 8-bit entries stored one per 16-bit word: in the low byte, or the high one
                let high = (0..entries).any(|i| words(i) > 0xff);
                (0..entries)
                    .map(|i| {
                        if high {
                            (words(i) >> 8) as u8
                        } else {
                            words(i) as u8
                        }
                    })
                    .collect()
            } else if bits == 8 && bytes.len() >= entries {
                bytes[..entries].to_vec()
            } else {
                return Err(invalid(
                    data_name,
                    format!("{} bytes", bytes.len()),
                    "a value for every descriptor entry",
                ));
            };
            first = first_mapped;
        }
        Ok(Palette { first, channels })
    }

    fn rgb(&self, index: u32) -> [u8; 3] {
        let pick = |lut: &Vec<u8>| {
            let i = (i64::from(index) - self.first).clamp(0, lut.len() as i64 - 1);
            lut[i as usize]
        };
        [
            pick(&self.channels[0]),
            pick(&self.channels[1]),
            pick(&self.channels[2]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ybr_full_converts_red_and_gray() {
        // pure red and mid gray in YBR_FULL
        assert_eq!(ybr_to_rgb(76, 85, 255), [254, 0, 0]);
        assert_eq!(ybr_to_rgb(128, 128, 128), [128, 128, 128]);
    }

    #[test]
    fn signed_samples_are_sign_extended_from_bits_stored() {
        let h = Header {
            rows: 1,
            cols: 3,
            frames: 1,
            samples: 1,
            bits_allocated: 16,
            bits_stored: 12,
            signed: true,
            planar: false,
            photometric: "MONOCHROME2".into(),
            color: ColorModel::Mono { invert: false },
            slope: 1.0,
            intercept: 0.0,
            window: None,
        };
        // 0xF800 has garbage above bit 11 (masked away); 0x0800 is -2048; 0x07FF is 2047
        let data = [0x00, 0xf8, 0x00, 0x08, 0xff, 0x07];
        let values: Vec<i32> = Samples::new(&h, &data).collect();
        assert_eq!(values, vec![-2048, -2048, 2047]);
    }
}
