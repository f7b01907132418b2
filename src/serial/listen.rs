//! The receiving end of the link, for checking it from a terminal: [`listen`] splits a byte
//! stream at the delimiter, decodes each frame and writes one line per message, then a summary;
//! [`listen_port`] does the same on a serial port.
//!
//! Lines (one per message, fields separated by spaces):
//!
//! ```text
//! skipped 28 bytes before the first delimiter (started mid-frame)
//! mask seq=1 capture_us=1007 size=4x2 encoding=rle bytes=38 area_px=2 lost=0
//! mask seq=3 capture_us=3007 size=200x100 encoding=contour bytes=50 area_px=9600 lost=1
//! rejected 38 bytes: CRC-32 is 8d5b0e51, frame content gives 2f0e2f41
//! status seq=3 capture_us=3007 bytes=38 processed=3 dropped=1
//! summary: messages=3 masks=2 status=1 rejected=1 lost=1 skipped_bytes=28
//! ```
//!
//! `bytes` counts the frame on the wire with its delimiter; `area_px` is the row runs' total or
//! the filled polygons' pixel count; `lost` is the gap in mask sequence numbers since the
//! previous mask: frames dropped before inference or not sent, and messages lost on the link.
//! A mask whose number is not after the previous one ends its line with `(sequence restarted)`.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::protocol::{self, Payload};

use super::SerialError;

/// Longest frame accepted without a delimiter; longer ones are rejected whole, so a stream
/// without zeros cannot grow the buffer without bound. A 4096 × 4096 mask of alternating pixels
/// takes about 34 MB as row runs, far beyond any link; real frames are kilobytes.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// How long one read of [`listen_port`] waits before checking the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// What [`listen`] saw, also written as its last line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenSummary {
    /// Messages decoded (masks and status).
    pub messages: u64,
    /// Mask messages decoded.
    pub masks: u64,
    /// Status messages decoded.
    pub statuses: u64,
    /// Frames rejected (COBS, CRC, header or payload errors, or too long).
    pub rejected: u64,
    /// Mask sequence numbers missing between consecutive masks.
    pub lost: u64,
    /// Bytes skipped before the first delimiter (a receiver that started mid-frame).
    pub skipped_bytes: u64,
}

impl fmt::Display for ListenSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "summary: messages={} masks={} status={} rejected={} lost={} skipped_bytes={}",
            self.messages, self.masks, self.statuses, self.rejected, self.lost, self.skipped_bytes
        )
    }
}

/// The decoding state between frames.
struct Receiver<W> {
    out: W,
    summary: ListenSummary,
    /// A delimiter has been seen: the bytes before it were the first, possibly partial, frame.
    synced: bool,
    last_mask_seq: Option<u32>,
}

impl<W: Write> Receiver<W> {
    /// Decodes one frame (without its delimiter) of `len` bytes, `frame` holding at most the
    /// first [`MAX_FRAME_BYTES`] of them, and writes its line.
    fn frame(&mut self, frame: &[u8], len: usize) -> io::Result<()> {
        let first = !self.synced;
        self.synced = true;
        if len == 0 {
            return Ok(()); // a delimiter sent to resynchronise
        }
        if len > frame.len() {
            self.summary.rejected += 1;
            return writeln!(
                self.out,
                "rejected {} bytes: no delimiter within {MAX_FRAME_BYTES} bytes",
                len + 1
            );
        }
        let msg = match protocol::decode(frame) {
            Ok(msg) => msg,
            Err(_) if first => {
                self.summary.skipped_bytes += len as u64;
                return writeln!(
                    self.out,
                    "skipped {len} bytes before the first delimiter (started mid-frame)"
                );
            }
            Err(err) => {
                self.summary.rejected += 1;
                return writeln!(self.out, "rejected {} bytes: {err}", len + 1);
            }
        };
        self.summary.messages += 1;
        let bytes = len + 1;
        let (encoding, area) = match &msg.payload {
            Payload::Status { processed, dropped } => {
                self.summary.statuses += 1;
                return writeln!(
                    self.out,
                    "status seq={} capture_us={} bytes={bytes} processed={processed} dropped={dropped}",
                    msg.seq, msg.capture_us
                );
            }
            Payload::Rle(rows) => (
                "rle",
                rows.iter()
                    .flatten()
                    .map(|&(_, n)| usize::from(n))
                    .sum::<usize>(),
            ),
            Payload::Contours(polygons) if polygons.is_empty() => ("contour", 0),
            Payload::Contours(polygons) => (
                "contour",
                protocol::polygons_to_mask(msg.width, msg.height, polygons)
                    .map_or(0, |mask| mask.area()),
            ),
        };
        self.summary.masks += 1;
        let (lost, note) = match self.last_mask_seq {
            None => (0, ""),
            Some(prev) => match msg.seq.wrapping_sub(prev) {
                gap @ 1..=0x8000_0000 => (gap - 1, ""),
                _ => (0, " (sequence restarted)"),
            },
        };
        self.last_mask_seq = Some(msg.seq);
        self.summary.lost += u64::from(lost);
        writeln!(
            self.out,
            "mask seq={} capture_us={} size={}x{} encoding={encoding} bytes={bytes} area_px={area} lost={lost}{note}",
            msg.seq, msg.capture_us, msg.width, msg.height
        )
    }
}

/// Reads wire frames from `input` until end of input or `stop` is set, writing one line per
/// message to `out` (formats in the module documentation) and a summary line at the end.
///
/// A read that fails with `TimedOut`, `WouldBlock` or `Interrupted` is retried after checking
/// `stop`, so a reader with a timeout lets the flag end the loop; any other read error ends it
/// (after the summary line) and is returned. Errors writing to `out` are returned at once.
pub fn listen<R: Read, W: Write>(
    mut input: R,
    out: W,
    stop: &AtomicBool,
) -> io::Result<ListenSummary> {
    let mut rx = Receiver {
        out,
        summary: ListenSummary::default(),
        synced: false,
        last_mask_seq: None,
    };
    let mut frame = Vec::new();
    let mut len = 0usize;
    let mut buf = vec![0u8; 4096];
    let failure = loop {
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        let n = match input.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => break Some(io::Error::new(e.kind(), format!("read failed: {e}"))),
        };
        for &b in &buf[..n] {
            if b == protocol::DELIMITER {
                rx.frame(&frame, len)?;
                frame.clear();
                len = 0;
            } else {
                if frame.len() < MAX_FRAME_BYTES {
                    frame.push(b);
                }
                len += 1;
            }
        }
        rx.out.flush()?;
    };
    writeln!(rx.out, "{}", rx.summary)?;
    rx.out.flush()?;
    match failure {
        Some(err) => Err(err),
        None => Ok(rx.summary),
    }
}

/// [`listen`] on the serial port at `path` (8N1 at `baud`), checking `stop` at least every
/// 100 ms. Ends when `stop` is set or the port fails (unplugged: the error says so, after the
/// summary line).
pub fn listen_port<W: Write>(
    path: &Path,
    baud: u32,
    out: W,
    stop: &AtomicBool,
) -> Result<ListenSummary, SerialError> {
    let port = serialport::new(path.to_string_lossy(), baud)
        .timeout(POLL)
        .open()
        .map_err(|source| SerialError::Open {
            port: path.to_path_buf(),
            source,
        })?;
    listen(port, out, stop).map_err(|source| SerialError::Listen {
        port: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Mask;
    use crate::protocol::{encode, Message};

    fn mask_msg(seq: u32) -> Vec<u8> {
        let mask = Mask::from_ascii(".##.\n....");
        encode(&Message {
            seq,
            capture_us: 1000 * u64::from(seq),
            width: 4,
            height: 2,
            flags: 0,
            payload: Payload::Rle(protocol::rle_rows(&mask)),
        })
    }

    fn run(stream: &[u8]) -> (String, ListenSummary) {
        let mut out = Vec::new();
        let summary = listen(stream, &mut out, &AtomicBool::new(false)).unwrap();
        (String::from_utf8(out).unwrap(), summary)
    }

    #[test]
    fn gaps_restarts_and_resync_delimiters() {
        let mut stream = vec![0, 0];
        for seq in [1, 2, 5, 3] {
            stream.extend(mask_msg(seq));
        }
        let (text, summary) = run(&stream);
        assert_eq!(
            text,
            "mask seq=1 capture_us=1000 size=4x2 encoding=rle bytes=38 area_px=2 lost=0\n\
             mask seq=2 capture_us=2000 size=4x2 encoding=rle bytes=38 area_px=2 lost=0\n\
             mask seq=5 capture_us=5000 size=4x2 encoding=rle bytes=38 area_px=2 lost=2\n\
             mask seq=3 capture_us=3000 size=4x2 encoding=rle bytes=38 area_px=2 lost=0 \
             (sequence restarted)\n\
             summary: messages=4 masks=4 status=0 rejected=0 lost=2 skipped_bytes=0\n"
        );
        assert_eq!(summary.lost, 2);
    }

    #[test]
    fn a_complete_first_frame_is_not_skipped_but_a_partial_one_is() {
        let (text, _) = run(&mask_msg(1));
        assert!(text.starts_with("mask seq=1 "), "{text}");
        let mut stream = mask_msg(1)[5..].to_vec();
        stream.extend(mask_msg(2));
        let (text, summary) = run(&stream);
        assert!(
            text.starts_with("skipped 32 bytes before the first delimiter (started mid-frame)\n"),
            "{text}"
        );
        assert_eq!((summary.skipped_bytes, summary.masks), (32, 1));
    }

    #[test]
    fn an_endless_frame_is_rejected_and_the_next_one_decodes() {
        let mut stream = vec![0];
        stream.resize(MAX_FRAME_BYTES + 11, 0x55);
        stream.push(0);
        stream.extend(mask_msg(9));
        let (text, summary) = run(&stream);
        assert!(
            text.starts_with(&format!(
                "rejected {} bytes: no delimiter within",
                MAX_FRAME_BYTES + 11
            )),
            "{}",
            &text[..80]
        );
        assert_eq!((summary.rejected, summary.masks), (1, 1));
    }

    #[test]
    fn a_read_error_ends_with_the_summary() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("device gone"))
            }
        }
        let mut out = Vec::new();
        let err = listen(Broken, &mut out, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(err.to_string(), "read failed: device gone");
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("summary: messages=0"));
    }
}
