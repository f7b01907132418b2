//! Fixed-size raw frames on a byte stream (stdin in the command line, or a file or FIFO), e.g.
//! from `ffmpeg -f rawvideo -pix_fmt yuyv422 -`.
//!
//! Every frame is exactly `width × height` pixels in one [`PixelFormat`] (`gray8`, `rgb24` or
//! `yuyv`), rows unpadded, frames back to back with nothing between them. The end of the
//! stream on a frame boundary ends the source; a stream that ends inside a frame gives one
//! error saying how many of the frame's bytes arrived, then the source ends. A read error also
//! ends the source after it is reported (a broken pipe does not heal).
//!
//! Reads block until the writer sends data: the stop flag is checked before each frame and
//! while pacing, but a read waiting on a silent writer is not interrupted by it.

use std::fmt;
use std::io::{ErrorKind, Read};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::pacing::Pacer;
use super::pixel::PixelFormat;
use super::{rate_text, Source, SourceError};
use crate::frame::Frame;

/// The size and pixel format of every frame of a raw stream; the spec form is
/// `WIDTHxHEIGHT:FORMAT`, e.g. `640x480:yuyv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFormat {
    width: u32,
    height: u32,
    format: PixelFormat,
}

impl RawFormat {
    /// A checked raw format: each side 1 to [`MAX_SIDE`](crate::frame::MAX_SIDE), an even
    /// width for `yuyv`, and a fixed-size format (not `mjpeg`).
    pub fn new(width: u32, height: u32, format: PixelFormat) -> Result<RawFormat, String> {
        if format == PixelFormat::Mjpeg {
            return Err(
                "mjpeg frames vary in size; raw streams carry gray8, rgb24 or yuyv".to_string(),
            );
        }
        format
            .check_size(width, height)
            .map_err(|e| e.to_string())?;
        Ok(RawFormat {
            width,
            height,
            format,
        })
    }

    /// Frame width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Pixel format of every frame.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// Bytes of one frame.
    pub fn frame_bytes(&self) -> usize {
        self.format
            .frame_bytes(self.width, self.height)
            .unwrap_or(0)
    }
}

impl FromStr for RawFormat {
    type Err = String;

    /// Parses `WIDTHxHEIGHT:FORMAT`; the error names the part at fault.
    fn from_str(s: &str) -> Result<RawFormat, String> {
        let (size, format) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT:FORMAT, e.g. 640x480:yuyv"))?;
        let (w, h) = size
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("size {size:?} is not WIDTHxHEIGHT, e.g. 640x480"))?;
        let side = |text: &str, name: &str| {
            text.parse::<u32>()
                .map_err(|_| format!("{name} {text:?} in {size:?} is not a whole number"))
        };
        let (width, height) = (side(w, "width")?, side(h, "height")?);
        let format: PixelFormat = format.parse()?;
        RawFormat::new(width, height, format)
    }
}

impl fmt::Display for RawFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}:{}", self.width, self.height, self.format)
    }
}

/// Raw frames read from `R`, exactly one frame's bytes at a time.
pub struct RawSource<R> {
    reader: R,
    origin: String,
    format: RawFormat,
    buffer: Vec<u8>,
    /// Index of the next frame.
    frame: u64,
    ended: bool,
    pacer: Pacer,
}

impl<R: Read + Send> RawSource<R> {
    /// Frames of `format` from `reader`; `origin` (`stdin`, a path) names the stream in
    /// errors. One frame per `interval`, or as fast as the reader delivers (`None`).
    pub fn new(
        reader: R,
        origin: impl Into<String>,
        format: RawFormat,
        interval: Option<Duration>,
    ) -> RawSource<R> {
        RawSource {
            reader,
            origin: origin.into(),
            format,
            buffer: vec![0; format.frame_bytes()],
            frame: 0,
            ended: false,
            pacer: Pacer::new(interval),
        }
    }

    /// Fills the frame buffer; returns how many bytes arrived before the end of the stream.
    fn fill(&mut self) -> Result<usize, SourceError> {
        let mut filled = 0;
        while filled < self.buffer.len() {
            match self.reader.read(&mut self.buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SourceError::RawRead {
                        origin: self.origin.clone(),
                        frame: self.frame,
                        source,
                    })
                }
            }
        }
        Ok(filled)
    }
}

impl<R: Read + Send> Source for RawSource<R> {
    fn describe(&self) -> String {
        format!(
            "raw {} frames on {}, {}",
            self.format,
            self.origin,
            match self.pacer.interval() {
                Some(_) => rate_text(self.pacer.interval()),
                None => "as fast as they arrive".to_string(),
            }
        )
    }

    fn next_frame(&mut self, stop: &AtomicBool) -> Result<Option<Frame>, SourceError> {
        if self.ended || stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let filled = self.fill().inspect_err(|_| self.ended = true)?;
        let expected = self.buffer.len();
        if filled < expected {
            self.ended = true;
            if filled == 0 {
                return Ok(None);
            }
            return Err(SourceError::RawTruncated {
                origin: self.origin.clone(),
                frame: self.frame,
                got: filled,
                expected,
            });
        }
        let index = self.frame;
        self.frame += 1;
        let stride = self.format.format.row_bytes(self.format.width).unwrap_or(0);
        let frame = self
            .format
            .format
            .to_frame(&self.buffer, self.format.width, self.format.height, stride)
            .map_err(|source| SourceError::Pixels {
                origin: self.origin.clone(),
                frame: index,
                source,
            })?;
        Ok(self.pacer.wait(stop).then_some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_errors_name_the_part_at_fault() {
        let f: RawFormat = "640x480:yuyv".parse().unwrap();
        assert_eq!(
            (f.width(), f.height(), f.format()),
            (640, 480, PixelFormat::Yuyv)
        );
        assert_eq!(f.frame_bytes(), 640 * 480 * 2);
        assert_eq!(f.to_string(), "640x480:yuyv");
        for (spec, needle) in [
            ("640x480", "not WIDTHxHEIGHT:FORMAT"),
            ("640:gray8", "size \"640\" is not WIDTHxHEIGHT"),
            ("64ax48:gray8", "width \"64a\""),
            ("64x-1:gray8", "height \"-1\""),
            ("64x48:nv12", "unknown pixel format \"nv12\""),
            ("0x48:gray8", "0x48"),
            ("63x48:yuyv", "even width"),
            ("64x48:mjpeg", "mjpeg frames vary in size"),
        ] {
            let err = spec.parse::<RawFormat>().unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    /// A reader that fails on its second call.
    struct Failing(bool);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                Err(std::io::Error::other("device unplugged"))
            } else {
                buf[0] = 1;
                Ok(1)
            }
        }
    }

    #[test]
    fn a_read_error_is_reported_once_then_the_stream_ends() {
        let stop = AtomicBool::new(false);
        let format = RawFormat::new(2, 1, PixelFormat::Gray8).unwrap();
        let mut source = RawSource::new(Failing(false), "pipe", format, None);
        let err = source.next_frame(&stop).unwrap_err().to_string();
        assert_eq!(err, "pipe: cannot read raw frame 0: device unplugged");
        assert!(source.next_frame(&stop).unwrap().is_none());
    }
}
