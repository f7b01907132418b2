//! The serial link's wire format (specified in `docs/serial-protocol.md`): messages are a
//! little-endian header and payload followed by a CRC-32, COBS-encoded and terminated by a zero
//! byte, so a receiver can resynchronise at the next zero after any corruption. Pure functions
//! with no I/O: the one implementation for whatever sends or receives on a link.
//!
//! A mask travels as row runs (encoding 1, exact) or as contour polygons (encoding 2, the outer
//! boundary of each region, simplified to fit a byte budget: see [`contours`]) for links too slow
//! to carry the runs at the frame rate.

mod contour;

use thiserror::Error;

use crate::frame::Mask;

pub use contour::{
    contour_payload_len, contours, outlines, polygons_to_mask, simplify, Polygon, MAX_COUNT,
};

/// Wire format version carried in every header.
pub const VERSION: u8 = 1;
/// Header length in bytes (before the payload).
pub const HEADER_LEN: usize = 24;
/// Frame delimiter on the wire.
pub const DELIMITER: u8 = 0;

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A mask as runs of set pixels per row.
    Rle(Vec<Vec<(u16, u16)>>),
    /// A mask as closed polygons on the pixel-corner lattice, each filled by the even-odd rule
    /// and the results joined ([`polygons_to_mask`]). [`encode`] writes at most [`MAX_COUNT`]
    /// polygons of at most [`MAX_COUNT`] vertices each (the limits [`contours`] keeps to).
    Contours(Vec<Polygon>),
    /// A heartbeat: the link is up, with counters of frames processed and dropped.
    Status { processed: u32, dropped: u32 },
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u32,
    pub capture_us: u64,
    pub width: u16,
    pub height: u16,
    pub flags: u8,
    pub payload: Payload,
}

/// Why a received frame was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("COBS: code byte {code} at offset {offset} runs past the frame's {len} bytes")]
    Cobs { code: u8, offset: usize, len: usize },
    #[error("frame of {len} bytes is shorter than header and CRC ({min} bytes)")]
    Short { len: usize, min: usize },
    #[error("CRC-32 is {found:08x}, frame content gives {expected:08x}")]
    Crc { expected: u32, found: u32 },
    #[error("version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown message type {kind} with encoding {encoding}")]
    Kind { kind: u8, encoding: u8 },
    #[error("payload length {declared} does not match the {found} bytes received")]
    PayloadLength { declared: usize, found: usize },
    #[error("RLE payload malformed at row {row}: {reason}")]
    Rle { row: usize, reason: &'static str },
    #[error("contour payload malformed at polygon {polygon}: {reason}")]
    Contour {
        polygon: usize,
        reason: &'static str,
    },
}

/// Message types and payload encodings (header bytes 1 and 16).
const KIND_MASK: u8 = 1;
const KIND_STATUS: u8 = 2;
const ENCODING_NONE: u8 = 0;
const ENCODING_RLE: u8 = 1;
const ENCODING_CONTOUR: u8 = 2;

// Frame sides are at most `MAX_SIDE`, so widths, heights and run bounds fit the u16 fields.
const _: () = assert!(crate::frame::MAX_SIDE <= u16::MAX as u32);

/// Runs of set pixels per row of a mask, as (start, length).
pub fn rle_rows(mask: &Mask) -> Vec<Vec<(u16, u16)>> {
    let w = mask.width();
    mask.bits()
        .chunks(w as usize)
        .map(|row| {
            let mut runs = Vec::new();
            let mut x = 0;
            while x < row.len() {
                if row[x] {
                    let start = x;
                    while x < row.len() && row[x] {
                        x += 1;
                    }
                    runs.push((start as u16, (x - start) as u16));
                } else {
                    x += 1;
                }
            }
            runs
        })
        .collect()
}

/// The mask a row-run payload describes.
pub fn rle_to_mask(
    width: u16,
    height: u16,
    rows: &[Vec<(u16, u16)>],
) -> Result<Mask, ProtocolError> {
    let (w, h) = (usize::from(width), usize::from(height));
    if rows.len() != h {
        return Err(ProtocolError::Rle {
            row: rows.len(),
            reason: "row count differs from height",
        });
    }
    let mut bits = vec![false; w * h];
    for (y, runs) in rows.iter().enumerate() {
        for &(start, len) in runs {
            let (start, end) = (usize::from(start), usize::from(start) + usize::from(len));
            if end > w {
                return Err(ProtocolError::Rle {
                    row: y,
                    reason: "run ends past the row",
                });
            }
            bits[y * w + start..y * w + end].fill(true);
        }
    }
    Mask::new(u32::from(width), u32::from(height), bits).map_err(|_| ProtocolError::Rle {
        row: 0,
        reason: "zero-size mask",
    })
}

/// Payload bytes of a row-run payload: per row a u16 count and four bytes per run.
pub fn rle_payload_len(rows: &[Vec<(u16, u16)>]) -> usize {
    rows.iter().map(|runs| 2 + 4 * runs.len()).sum()
}

/// The most bytes a message with a `payload_len`-byte payload takes on the wire: header, payload
/// and CRC, plus COBS's one byte per 254 and its leading code byte, plus the delimiter.
pub fn max_wire_len(payload_len: usize) -> usize {
    let raw = HEADER_LEN + payload_len + 4;
    raw + 1 + raw / 254 + 1
}

/// Encodes a message into one wire frame: COBS(header ‖ payload ‖ CRC-32) ‖ 0x00.
pub fn encode(msg: &Message) -> Vec<u8> {
    let (kind, encoding, payload) = match &msg.payload {
        Payload::Rle(rows) => {
            let mut p = Vec::new();
            for runs in rows {
                p.extend_from_slice(&(runs.len() as u16).to_le_bytes());
                for &(start, len) in runs {
                    p.extend_from_slice(&start.to_le_bytes());
                    p.extend_from_slice(&len.to_le_bytes());
                }
            }
            (KIND_MASK, ENCODING_RLE, p)
        }
        Payload::Contours(polygons) => {
            let polygons = &polygons[..polygons.len().min(MAX_COUNT)];
            let mut p = Vec::with_capacity(contour_payload_len(polygons));
            p.extend_from_slice(&(polygons.len() as u16).to_le_bytes());
            for polygon in polygons {
                let vertices = &polygon[..polygon.len().min(MAX_COUNT)];
                p.extend_from_slice(&(vertices.len() as u16).to_le_bytes());
                for &(x, y) in vertices {
                    p.extend_from_slice(&x.to_le_bytes());
                    p.extend_from_slice(&y.to_le_bytes());
                }
            }
            (KIND_MASK, ENCODING_CONTOUR, p)
        }
        Payload::Status { processed, dropped } => {
            let mut p = processed.to_le_bytes().to_vec();
            p.extend_from_slice(&dropped.to_le_bytes());
            (KIND_STATUS, ENCODING_NONE, p)
        }
    };
    let mut raw = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    raw.push(VERSION);
    raw.push(kind);
    raw.extend_from_slice(&msg.seq.to_le_bytes());
    raw.extend_from_slice(&msg.capture_us.to_le_bytes());
    raw.extend_from_slice(&msg.width.to_le_bytes());
    raw.extend_from_slice(&msg.height.to_le_bytes());
    raw.push(encoding);
    raw.push(msg.flags);
    raw.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    raw.extend_from_slice(&payload);
    let crc = crc32(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    let mut out = cobs_encode(&raw);
    out.push(DELIMITER);
    out
}

/// Decodes one wire frame (without its trailing zero).
pub fn decode(frame: &[u8]) -> Result<Message, ProtocolError> {
    let raw = cobs_decode(frame)?;
    let min = HEADER_LEN + 4;
    if raw.len() < min {
        return Err(ProtocolError::Short {
            len: raw.len(),
            min,
        });
    }
    let (body, tail) = raw.split_at(raw.len() - 4);
    let found = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    let expected = crc32(body);
    if found != expected {
        return Err(ProtocolError::Crc { expected, found });
    }
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    if body[0] != VERSION {
        return Err(ProtocolError::Version(body[0]));
    }
    let (kind, encoding, height) = (body[1], body[18], u16_at(16));
    let payload = &body[HEADER_LEN..];
    let declared = u32_at(20) as usize;
    if declared != payload.len() {
        return Err(ProtocolError::PayloadLength {
            declared,
            found: payload.len(),
        });
    }
    let payload = match (kind, encoding) {
        (KIND_MASK, ENCODING_RLE) => Payload::Rle(parse_rle(payload, height)?),
        (KIND_MASK, ENCODING_CONTOUR) => {
            let polygons = parse_contours(payload)?;
            contour::check_polygons(u16_at(14), height, &polygons)?;
            Payload::Contours(polygons)
        }
        (KIND_STATUS, ENCODING_NONE) if payload.len() == 8 => Payload::Status {
            processed: u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]),
            dropped: u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]),
        },
        _ => return Err(ProtocolError::Kind { kind, encoding }),
    };
    Ok(Message {
        seq: u32_at(2),
        capture_us: u64::from(u32_at(6)) | (u64::from(u32_at(10)) << 32),
        width: u16_at(14),
        height,
        flags: body[19],
        payload,
    })
}

/// Parses `height` rows of `count u16, then count × (start u16, length u16)`.
fn parse_rle(mut p: &[u8], height: u16) -> Result<Vec<Vec<(u16, u16)>>, ProtocolError> {
    let mut take = |row: usize| -> Result<u16, ProtocolError> {
        let (v, rest) = p.split_first_chunk::<2>().ok_or(ProtocolError::Rle {
            row,
            reason: "payload ends inside a row",
        })?;
        p = rest;
        Ok(u16::from_le_bytes(*v))
    };
    let mut rows = Vec::with_capacity(usize::from(height));
    for row in 0..usize::from(height) {
        let count = take(row)?;
        let mut runs = Vec::with_capacity(usize::from(count).min(1024));
        for _ in 0..count {
            runs.push((take(row)?, take(row)?));
        }
        rows.push(runs);
    }
    if !p.is_empty() {
        return Err(ProtocolError::Rle {
            row: usize::from(height),
            reason: "bytes left after the last row",
        });
    }
    Ok(rows)
}

/// Parses `count u16, then per polygon: n u16, then n × (x u16, y u16)`.
fn parse_contours(mut p: &[u8]) -> Result<Vec<Polygon>, ProtocolError> {
    let mut take = |polygon: usize| -> Result<u16, ProtocolError> {
        let (v, rest) = p.split_first_chunk::<2>().ok_or(ProtocolError::Contour {
            polygon,
            reason: "payload ends inside a polygon",
        })?;
        p = rest;
        Ok(u16::from_le_bytes(*v))
    };
    let count = usize::from(take(0)?);
    let mut polygons = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let n = take(i)?;
        let mut vertices = Vec::with_capacity(usize::from(n).min(1024));
        for _ in 0..n {
            vertices.push((take(i)?, take(i)?));
        }
        polygons.push(vertices);
    }
    if !p.is_empty() {
        return Err(ProtocolError::Contour {
            polygon: count,
            reason: "bytes left after the last polygon",
        });
    }
    Ok(polygons)
}

/// CRC-32 (IEEE 802.3: reflected polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF),
/// the checksum of zlib and Ethernet; `crc32(b"123456789") == 0xCBF43926`.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// Consistent Overhead Byte Stuffing: the output holds no zero byte.
pub fn cobs_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 254 + 2);
    let mut code_at = 0;
    out.push(0);
    let mut code = 1u8;
    for &b in data {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out
}

/// The inverse of [`cobs_encode`].
pub fn cobs_decode(data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let code = data[i];
        let end = i + usize::from(code);
        if code == 0 || end > data.len() {
            return Err(ProtocolError::Cobs {
                code,
                offset: i,
                len: data.len(),
            });
        }
        out.extend_from_slice(&data[i + 1..end]);
        i = end;
        if code != 0xFF && i < data.len() {
            out.push(0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_message(mask: &Mask) -> Message {
        Message {
            seq: 7,
            capture_us: 0x0102_0304_0506_0708,
            width: mask.width() as u16,
            height: mask.height() as u16,
            flags: 0,
            payload: Payload::Rle(rle_rows(mask)),
        }
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn cobs_round_trips_and_removes_zeros() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1, 2, 0, 3],
            (1..=254).collect(),
            (0..=255).cycle().take(1000).collect(),
        ];
        for data in cases {
            let enc = cobs_encode(&data);
            assert!(!enc.contains(&0), "{data:?}");
            assert_eq!(cobs_decode(&enc).unwrap(), data);
        }
        assert_eq!(
            cobs_encode(&[0x11, 0x22, 0x00, 0x33]),
            vec![0x03, 0x11, 0x22, 0x02, 0x33]
        );
    }

    #[test]
    fn mask_message_round_trips() {
        let mask = Mask::from_ascii(
            "
            ..##..
            ......
            #....#
            ######",
        );
        let msg = mask_message(&mask);
        let wire = encode(&msg);
        assert_eq!(wire.last(), Some(&DELIMITER));
        assert!(!wire[..wire.len() - 1].contains(&0));
        let back = decode(&wire[..wire.len() - 1]).unwrap();
        assert_eq!(back, msg);
        let Payload::Rle(rows) = &back.payload else {
            panic!("not RLE")
        };
        assert_eq!(rle_to_mask(back.width, back.height, rows).unwrap(), mask);
    }

    #[test]
    fn worked_example_of_the_specification() {
        let msg = Message {
            seq: 1,
            capture_us: 1000,
            width: 4,
            height: 2,
            flags: 0,
            payload: Payload::Rle(rle_rows(&Mask::from_ascii(".##.\n...."))),
        };
        let wire: Vec<u8> = [
            0x04, 0x01, 0x01, 0x01, 0x01, 0x01, 0x03, 0xe8, 0x03, 0x01, 0x01, 0x01, 0x01, 0x01,
            0x02, 0x04, 0x02, 0x02, 0x02, 0x01, 0x02, 0x08, 0x01, 0x01, 0x02, 0x01, 0x02, 0x01,
            0x02, 0x02, 0x01, 0x01, 0x05, 0xf9, 0xa1, 0xad, 0x19, 0x00,
        ]
        .to_vec();
        assert_eq!(encode(&msg), wire, "docs/serial-protocol.md");
    }

    #[test]
    fn worked_contour_example_of_the_specification() {
        let mask = Mask::from_ascii(
            "
            .##.
            .##.
            ....",
        );
        let polygons = contours(&mask, 1000);
        assert_eq!(polygons, vec![vec![(1, 0), (3, 0), (3, 2), (1, 2)]]);
        let msg = Message {
            seq: 2,
            capture_us: 2000,
            width: 4,
            height: 3,
            flags: 0,
            payload: Payload::Contours(polygons),
        };
        let wire: Vec<u8> = [
            0x04, 0x01, 0x01, 0x02, 0x01, 0x01, 0x03, 0xd0, 0x07, 0x01, 0x01, 0x01, 0x01, 0x01,
            0x02, 0x04, 0x02, 0x03, 0x02, 0x02, 0x02, 0x14, 0x01, 0x01, 0x02, 0x01, 0x02, 0x04,
            0x02, 0x01, 0x01, 0x01, 0x02, 0x03, 0x01, 0x01, 0x02, 0x03, 0x02, 0x02, 0x02, 0x01,
            0x02, 0x02, 0x05, 0x56, 0x5f, 0x8b, 0xee, 0x00,
        ]
        .to_vec();
        assert_eq!(encode(&msg), wire, "docs/serial-protocol.md");
        let back = decode(&wire[..wire.len() - 1]).unwrap();
        assert_eq!(back, msg);
        let Payload::Contours(polygons) = &back.payload else {
            panic!("not contours")
        };
        assert_eq!(polygons_to_mask(4, 3, polygons).unwrap(), mask);
    }

    #[test]
    fn contour_message_round_trips_and_bad_polygons_are_rejected() {
        let mask = Mask::from_ascii(
            "
            ##....#
            ##...##
            .......",
        );
        let msg = Message {
            payload: Payload::Contours(contours(&mask, 1000)),
            ..mask_message(&mask)
        };
        let wire = encode(&msg);
        assert_eq!(decode(&wire[..wire.len() - 1]).unwrap(), msg);
        assert_eq!(contour_payload_len(&contours(&mask, 1000)), 2 + 18 + 26);
        let bad = |payload| {
            let wire = encode(&Message {
                payload: Payload::Contours(payload),
                ..mask_message(&mask)
            });
            decode(&wire[..wire.len() - 1])
        };
        assert!(matches!(
            bad(vec![vec![(0, 0), (8, 0), (8, 1)]]),
            Err(ProtocolError::Contour { polygon: 0, .. })
        ));
        assert!(matches!(
            bad(vec![vec![(0, 0), (1, 0), (1, 1)], vec![(0, 0), (1, 0)]]),
            Err(ProtocolError::Contour { polygon: 1, .. })
        ));
        // A payload cut short, with a valid CRC: the length check holds, the parse does not.
        let mut raw = cobs_decode(&wire[..wire.len() - 1]).unwrap();
        raw.truncate(raw.len() - 4);
        raw.truncate(raw.len() - 2);
        let declared = (raw.len() - HEADER_LEN) as u32;
        raw[20..24].copy_from_slice(&declared.to_le_bytes());
        let crc = crc32(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode(&cobs_encode(&raw)),
            Err(ProtocolError::Contour { .. })
        ));
    }

    #[test]
    fn wire_length_bound_holds() {
        for side in [1u32, 3, 40, 200] {
            let bits = (0..side * side).map(|i| i % 3 == 0).collect();
            let mask = Mask::new(side, side, bits).unwrap();
            let msg = mask_message(&mask);
            let rows = rle_rows(&mask);
            let bound = max_wire_len(rle_payload_len(&rows));
            let wire = encode(&msg).len();
            assert!(wire <= bound, "{side}: {wire} bytes, bound {bound}");
        }
        assert_eq!(max_wire_len(10), 40); // the worked example takes 38
    }

    #[test]
    fn status_round_trips() {
        let msg = Message {
            seq: 1,
            capture_us: 5,
            width: 0,
            height: 0,
            flags: 0,
            payload: Payload::Status {
                processed: 10,
                dropped: 3,
            },
        };
        let wire = encode(&msg);
        assert_eq!(decode(&wire[..wire.len() - 1]).unwrap(), msg);
    }

    #[test]
    fn every_single_byte_corruption_is_rejected() {
        let msg = mask_message(&Mask::from_ascii("#.#\n.#."));
        let wire = encode(&msg);
        let body = &wire[..wire.len() - 1];
        for i in 0..body.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bad = body.to_vec();
                bad[i] ^= flip;
                if bad[i] == 0 {
                    continue; // a zero would end the frame on the wire, splitting it
                }
                assert!(decode(&bad).is_err(), "byte {i} ^ {flip:#x} accepted");
            }
        }
    }

    #[test]
    fn bad_frames_name_the_problem() {
        assert!(matches!(
            decode(&[5, 1, 2]),
            Err(ProtocolError::Cobs { .. })
        ));
        assert!(matches!(
            decode(&cobs_encode(&[1; 10])),
            Err(ProtocolError::Short { .. })
        ));
        let mut raw = vec![9u8; HEADER_LEN];
        let crc = crc32(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&cobs_encode(&raw)), Err(ProtocolError::Version(9)));
        assert!(rle_to_mask(4, 1, &[vec![(3, 2)]]).is_err());
    }
}
