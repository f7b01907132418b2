//! A streaming walk over the element headers of a DICOM file that checks every declared
//! length against the file size, and bounds sequence nesting, before dicom-object parses it.
//!
//! Why: the parser reserves and zero-fills a buffer of the declared length before reading a
//! value, so a corrupt 4-byte length in a 3 KB file costs gigabytes of memory; and it recurses
//! once per sequence level, so a file of deeply nested sequences overflows the stack (an
//! abort, not a panic). Values are skipped, never read. Headers are read the way dicom-rs
//! reads them, so both see the same lengths; a binary value that is not a whole number of
//! its VR's units is refused, because dicom-rs would read only the whole units and go on from
//! the wrong place. In implicit VR the VR is not in the file (the parser takes it from its
//! dictionary), so that last check cannot be made there.

use std::io::{BufRead, Seek, SeekFrom};

/// Deepest sequence nesting accepted. Real files stay within a handful of levels; the parser
/// recurses once per level, so a hostile file could otherwise exhaust the stack.
const MAX_NESTING: u32 = 32;

/// Where the scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stop {
    /// At something it cannot follow (a malformed header, the end of the file): the parser
    /// decides.
    Lost,
    /// A declared length runs past the end of the file.
    Overrun(String),
    /// Sequences nested deeper than [`MAX_NESTING`].
    TooDeep(String),
    /// A binary value whose length is not a whole number of its VR's units: dicom-rs reads
    /// only the whole units and loses its place in the file.
    Misaligned(String),
}

/// Explicit VRs with a 2-byte length (PS3.5 7.1.2); every other VR code, unknown ones
/// included, has 2 reserved bytes and a 4-byte length, as dicom-rs reads them.
const SHORT_VRS: [[u8; 2]; 21] = [
    *b"AE", *b"AS", *b"AT", *b"CS", *b"DA", *b"DS", *b"DT", *b"FL", *b"FD", *b"IS", *b"LO", *b"LT",
    *b"PN", *b"SH", *b"SL", *b"SS", *b"ST", *b"TM", *b"UI", *b"UL", *b"US",
];
/// VR codes other than [`SHORT_VRS`] that dicom-rs knows; an unknown code is read as UN.
const OTHER_VRS: [[u8; 2]; 13] = [
    *b"OB", *b"OD", *b"OF", *b"OL", *b"OV", *b"OW", *b"SQ", *b"SV", *b"UC", *b"UN", *b"UR", *b"UT",
    *b"UV",
];
const UNDEFINED: u32 = u32::MAX;

/// Bytes per value of a binary VR (1 for text and byte VRs).
fn unit(vr: [u8; 2]) -> u32 {
    match &vr {
        b"US" | b"SS" | b"OW" => 2,
        b"AT" | b"UL" | b"SL" | b"FL" | b"OL" | b"OF" => 4,
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => 8,
        _ => 1,
    }
}
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const ITEM: (u16, u16) = (0xFFFE, 0xE000);

/// Binary bulk data (pixel, overlay and waveform data), never a sequence.
fn bulk(tag: (u16, u16)) -> bool {
    matches!(tag, (0x7FE0, _) | (0x5400, 0x1010))
        || ((0x6000..=0x601E).contains(&tag.0) && tag.1 == 0x3000)
}

/// One element header: tag, explicit VR if any, length, and the offset it starts at.
struct ElementHeader {
    tag: (u16, u16),
    vr: Option<[u8; 2]>,
    len: u32,
    at: u64,
}

/// The walk (see the module docs). Values are skipped, except that in implicit VR, where the
/// VR is not in the file, a defined-length value that opens with an item tag is walked as a
/// sequence (bulk data excepted).
pub(super) struct Scan<R> {
    reader: R,
    pos: u64,
    end: u64,
}

impl<R: BufRead + Seek> Scan<R> {
    /// Scans the meta group of a file of `end` bytes whose reader is at its start, as
    /// dicom-object reads it: (0002,0000) gives the group length, elements follow until it is
    /// used up. Returns where the data set starts.
    pub(super) fn meta(reader: R, end: u64) -> Result<u64, Stop> {
        let mut scan = Scan {
            reader,
            pos: 0,
            end,
        };
        scan.skip(132)?;
        let first = scan.element(true)?;
        if first.tag != (0x0002, 0x0000) || first.len != 4 {
            return Err(Stop::Lost);
        }
        let group_len = u64::from(u32::from_le_bytes(scan.read::<4>()?));
        let group_start = scan.pos;
        while scan.pos - group_start < group_len {
            let h = scan.element(true)?;
            if h.len == UNDEFINED {
                return Err(Stop::Lost);
            }
            scan.fits(&h)?;
            scan.skip(h.len.into())?;
        }
        Ok(scan.pos)
    }

    /// Scans a data set in the given encoding from byte `start` (where the reader is) to the
    /// end of a file of `end` bytes. Stopping at something it cannot follow is not an error:
    /// the parser decides.
    pub(super) fn dataset_at(reader: R, start: u64, end: u64, explicit: bool) -> Result<(), Stop> {
        let mut scan = Scan {
            reader,
            pos: start,
            end,
        };
        match scan.dataset(None, explicit, 0) {
            Err(Stop::Lost) => Ok(()),
            other => other,
        }
    }

    fn read<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        let mut buf = [0u8; N];
        self.reader.read_exact(&mut buf).map_err(|_| Stop::Lost)?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> Result<(), Stop> {
        let step = i64::try_from(n).map_err(|_| Stop::Lost)?;
        self.reader.seek_relative(step).map_err(|_| Stop::Lost)?;
        self.pos += n;
        Ok(())
    }

    fn seek_to(&mut self, pos: u64) -> Result<(), Stop> {
        self.reader
            .seek(SeekFrom::Start(pos))
            .map_err(|_| Stop::Lost)?;
        self.pos = pos;
        Ok(())
    }

    /// Whether the next bytes are an item tag (FFFE,E000), without consuming them.
    fn starts_with_item(&mut self) -> Result<bool, Stop> {
        let next = self.read::<4>()?;
        self.reader.seek_relative(-4).map_err(|_| Stop::Lost)?;
        self.pos -= 4;
        Ok(next == [0xFE, 0xFF, 0x00, 0xE0])
    }

    fn at_end(&self, end: Option<u64>) -> bool {
        self.pos >= self.end || end.is_some_and(|end| self.pos >= end)
    }

    /// Checks that the value of `h`, starting at the current position, fits in the file, and
    /// holds whole values of its VR.
    fn fits(&self, h: &ElementHeader) -> Result<(), Stop> {
        if let Some(vr) = h.vr {
            if !h.len.is_multiple_of(unit(vr)) {
                return Err(Stop::Misaligned(format!(
                    "element ({:04X},{:04X}) at byte {} has VR {} and {} bytes, not a multiple \
                     of {}",
                    h.tag.0,
                    h.tag.1,
                    h.at,
                    String::from_utf8_lossy(&vr),
                    h.len,
                    unit(vr)
                )));
            }
        }
        let left = self.end.saturating_sub(self.pos);
        if u64::from(h.len) > left {
            return Err(Stop::Overrun(format!(
                "element ({:04X},{:04X}) at byte {} declares {} bytes, the file holds {left} \
                 more",
                h.tag.0, h.tag.1, h.at, h.len
            )));
        }
        Ok(())
    }

    fn element(&mut self, explicit: bool) -> Result<ElementHeader, Stop> {
        let at = self.pos;
        let t = self.read::<4>()?;
        let tag = (
            u16::from_le_bytes([t[0], t[1]]),
            u16::from_le_bytes([t[2], t[3]]),
        );
        if tag.0 == 0xFFFE || !explicit {
            // items and delimiters carry no VR in either encoding
            let len = u32::from_le_bytes(self.read::<4>()?);
            return Ok(ElementHeader {
                tag,
                vr: None,
                len,
                at,
            });
        }
        let vr = self.read::<2>()?;
        let len = if SHORT_VRS.contains(&vr) {
            u32::from(u16::from_le_bytes(self.read::<2>()?))
        } else {
            self.read::<2>()?;
            u32::from_le_bytes(self.read::<4>()?)
        };
        let vr = if OTHER_VRS.contains(&vr) || SHORT_VRS.contains(&vr) {
            vr
        } else {
            *b"UN"
        };
        Ok(ElementHeader {
            tag,
            vr: Some(vr),
            len,
            at,
        })
    }

    /// Walks a data set up to `end`, or when `None` up to an item delimiter.
    fn dataset(&mut self, end: Option<u64>, explicit: bool, depth: u32) -> Result<(), Stop> {
        while !self.at_end(end) {
            let h = self.element(explicit)?;
            if h.tag.0 == 0xFFFE {
                if depth == 0 && h.tag != ITEM {
                    // a stray delimiter at the top level: step over it
                    continue;
                }
                // a delimiter closes an undefined-length item
                return Ok(());
            }
            if h.len == UNDEFINED {
                // a sequence, encapsulated pixel data, or UN holding implicit VR
                let fragments = h.tag == PIXEL_DATA;
                let inner_explicit = explicit && h.vr != Some(*b"UN");
                self.items(None, fragments, inner_explicit, depth + 1)?;
                continue;
            }
            self.fits(&h)?;
            let value_end = self.pos + u64::from(h.len);
            if h.vr == Some(*b"SQ") {
                self.items(Some(value_end), false, explicit, depth + 1)?;
                if self.pos != value_end {
                    return Err(Stop::Lost);
                }
            } else if h.vr.is_none() && h.len >= 8 && !bulk(h.tag) && self.starts_with_item()? {
                // implicit VR: a value that opens with an item tag is taken for a sequence;
                // if it does not walk as one, it is skipped as an opaque value
                match self.items(Some(value_end), false, explicit, depth + 1) {
                    Ok(()) | Err(Stop::Lost) => self.seek_to(value_end)?,
                    Err(e) => return Err(e),
                }
            } else {
                self.skip(h.len.into())?;
            }
        }
        Ok(())
    }

    /// Walks the items of a sequence, or the fragments of encapsulated pixel data.
    fn items(
        &mut self,
        end: Option<u64>,
        fragments: bool,
        explicit: bool,
        depth: u32,
    ) -> Result<(), Stop> {
        if depth > MAX_NESTING {
            return Err(Stop::TooDeep(format!(
                "sequences nest more than {MAX_NESTING} levels deep at byte {}",
                self.pos
            )));
        }
        while !self.at_end(end) {
            let h = self.element(explicit)?;
            match h.tag {
                (0xFFFE, 0xE0DD) => return Ok(()),
                ITEM if h.len == UNDEFINED && !fragments => {
                    self.dataset(None, explicit, depth)?;
                }
                ITEM if h.len != UNDEFINED => {
                    self.fits(&h)?;
                    let item_end = self.pos + u64::from(h.len);
                    if fragments {
                        self.skip(h.len.into())?;
                    } else {
                        self.dataset(Some(item_end), explicit, depth)?;
                        if self.pos != item_end {
                            return Err(Stop::Lost);
                        }
                    }
                }
                _ => return Err(Stop::Lost),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Little-endian element bytes: tag, then `vr` (explicit) or nothing (implicit), length.
    fn el(group: u16, element: u16, vr: Option<&[u8; 2]>, len: u32) -> Vec<u8> {
        let mut out = [group.to_le_bytes(), element.to_le_bytes()].concat();
        match vr {
            Some(vr) if SHORT_VRS.contains(vr) => {
                out.extend_from_slice(vr);
                out.extend_from_slice(&(len as u16).to_le_bytes());
            }
            Some(vr) => {
                out.extend_from_slice(vr);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&len.to_le_bytes());
            }
            None => out.extend_from_slice(&len.to_le_bytes()),
        }
        out
    }

    fn scan(dataset: &[u8], explicit: bool) -> Result<(), Stop> {
        let reader = std::io::Cursor::new(dataset);
        Scan::dataset_at(reader, 0, dataset.len() as u64, explicit)
    }

    #[test]
    fn scan_accepts_lengths_that_fit() {
        let mut ds = el(0x0010, 0x0010, Some(b"PN"), 4);
        ds.extend_from_slice(b"A^B ");
        ds.extend(el(0x7FE0, 0x0010, Some(b"OB"), 2));
        ds.extend_from_slice(&[1, 2]);
        assert_eq!(scan(&ds, true), Ok(()));
    }

    #[test]
    fn scan_refuses_a_length_past_the_end_of_the_file() {
        let mut ds = el(0x0010, 0x0010, Some(b"PN"), 4);
        ds.extend_from_slice(b"A^B ");
        ds.extend(el(0x7FE0, 0x0010, Some(b"OW"), 0xFFFF_FFF0));
        ds.extend_from_slice(&[0; 16]);
        let Err(Stop::Overrun(msg)) = scan(&ds, true) else {
            panic!("expected an overrun");
        };
        assert!(
            msg.contains("(7FE0,0010) at byte 12 declares 4294967280 bytes"),
            "{msg}"
        );
        assert!(msg.contains("holds 16 more"), "{msg}");
    }

    #[test]
    fn scan_reads_unknown_explicit_vrs_with_long_lengths_as_dicom_rs_does() {
        // "ZZ" is no VR: 2 reserved bytes and a 4-byte length follow
        let mut ds = el(0x0009, 0x0010, Some(b"ZZ"), 0x4000_0000);
        ds.extend_from_slice(&[0; 8]);
        assert!(matches!(scan(&ds, true), Err(Stop::Overrun(_))));
    }

    #[test]
    fn scan_refuses_binary_values_of_partial_length() {
        // Samples per Pixel as UL with 2 bytes: dicom-rs would read 0 values and lose its place
        let mut ds = el(0x0028, 0x0002, Some(b"UL"), 2);
        ds.extend_from_slice(&[1, 0]);
        let Err(Stop::Misaligned(msg)) = scan(&ds, true) else {
            panic!("expected a misaligned value");
        };
        assert!(
            msg.contains("VR UL and 2 bytes, not a multiple of 4"),
            "{msg}"
        );
    }

    #[test]
    fn scan_follows_implicit_sequences_of_defined_length() {
        // (0040,A730) holding one item holding an element whose length overruns the file
        let inner = el(0x0008, 0x0100, None, 0x7000_0000);
        let mut item = el(0xFFFE, 0xE000, None, inner.len() as u32);
        item.extend(inner);
        let mut ds = el(0x0040, 0xA730, None, item.len() as u32);
        ds.extend(item);
        let Err(Stop::Overrun(msg)) = scan(&ds, false) else {
            panic!("expected an overrun");
        };
        assert!(msg.contains("(0008,0100)"), "{msg}");
    }

    #[test]
    fn scan_refuses_deep_nesting_and_skips_fragments() {
        let open = [
            el(0x0040, 0xA730, Some(b"SQ"), UNDEFINED),
            el(0xFFFE, 0xE000, None, UNDEFINED),
        ]
        .concat();
        let deep = open.repeat(MAX_NESTING as usize + 1);
        assert!(matches!(scan(&deep, true), Err(Stop::TooDeep(_))));

        let mut pixels = el(0x7FE0, 0x0010, Some(b"OB"), UNDEFINED);
        pixels.extend(el(0xFFFE, 0xE000, None, 0)); // empty offset table
        pixels.extend(el(0xFFFE, 0xE000, None, 4));
        pixels.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xD9]);
        pixels.extend(el(0xFFFE, 0xE0DD, None, 0));
        assert_eq!(scan(&pixels, true), Ok(()));
        let cut = &pixels[..pixels.len() - 12];
        assert!(matches!(scan(cut, true), Err(Stop::Overrun(_))));
    }
}
