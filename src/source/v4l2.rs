//! V4L2 video capture (USB cameras, HDMI/SDI capture cards, scope and probe video grabbers).
//!
//! The device is opened with `linuxvideo` (pure Rust: no kernel headers or libclang at build
//! time, so the static `aarch64-unknown-linux-musl` build works), asked for the configured
//! size and pixel format (`yuyv`, `mjpeg`, `gray8`/`GREY` or `rgb24`/`RGB3`) and, when a rate
//! is configured, for that frame interval; then frames stream through memory-mapped buffers.
//! The driver may adjust the size (logged, the frames carry the size it chose) or the pixel
//! format (accepted when it is one of the four, else an error). A rate the driver refuses is
//! logged, not an error: frames then come at the device's own rate.
//!
//! Waiting for a frame polls the device in slices of [`STOP_CHECK_INTERVAL`], so a set stop
//! flag ends the wait promptly. When the device fails (unplugged, a driver error, or no frame for
//! [`STALL_TIMEOUT`]), the call returns the error and closes the device; later calls reopen it,
//! waiting [`FIRST_RETRY`] before the first attempt and doubling the wait after each failure up
//! to [`MAX_RETRY`]. The waits also end at the stop flag. A frame that fails alone (a corrupt
//! MJPEG frame, a buffer the driver flags as bad) is an error for that frame only.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use linuxvideo::format::PixFormat;
use linuxvideo::stream::ReadStream;
use linuxvideo::{CapabilityFlags, Device, Fract};

use super::pacing::{sleep_until, STOP_CHECK_INTERVAL};
use super::pixel::PixelFormat;
use super::{rate_text, Source, SourceError};
use crate::frame::Frame;

/// Wait before the first reopening attempt after a failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Longest wait between reopening attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(2);

/// A streaming device that delivers no frame for this long is treated as failed.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What to capture, and from which device.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Settings {
    /// The device node, e.g. `/dev/video0`.
    pub device: PathBuf,
    /// Requested frame width in pixels.
    pub width: u32,
    /// Requested frame height in pixels.
    pub height: u32,
    /// Requested pixel format.
    pub format: PixelFormat,
    /// Requested frame interval; `None` keeps the device's current rate.
    pub interval: Option<Duration>,
}

/// When the next reopening attempt is due, and how long the one after will wait.
#[derive(Debug, Clone)]
struct Backoff {
    next_attempt: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    /// No failure yet: the first attempt is due at once.
    fn new() -> Backoff {
        Backoff {
            next_attempt: None,
            delay: FIRST_RETRY,
        }
    }

    /// A failure at `now`: the next attempt waits the current delay, which then doubles.
    fn failed(&mut self, now: Instant) {
        self.next_attempt = Some(now + self.delay);
        self.delay = (self.delay * 2).min(MAX_RETRY);
    }

    /// A frame arrived: the device works again.
    fn succeeded(&mut self) {
        *self = Backoff::new();
    }
}

/// An open device, streaming.
struct Capture {
    stream: ReadStream,
    width: u32,
    height: u32,
    /// Bytes between row starts.
    stride: usize,
    format: PixelFormat,
    /// When the stream started or last delivered a frame.
    last_frame: Instant,
}

/// Frames from a V4L2 capture device, reopened with back-off when it fails.
pub struct V4l2Source {
    settings: V4l2Settings,
    capture: Option<Capture>,
    backoff: Backoff,
    /// Index of the next frame, over every reopening.
    frame: u64,
}

impl V4l2Source {
    /// A source that opens the device on its first [`Source::next_frame`] call (and reopens
    /// it after failures), for callers that wait for a device to appear.
    pub fn new(settings: V4l2Settings) -> V4l2Source {
        V4l2Source {
            settings,
            capture: None,
            backoff: Backoff::new(),
            frame: 0,
        }
    }

    /// Opens the device now, so that a wrong path or an unusable device fails at start.
    pub fn open(settings: V4l2Settings) -> Result<V4l2Source, SourceError> {
        let mut source = V4l2Source::new(settings);
        source.capture = Some(source.connect()?);
        Ok(source)
    }

    /// Whether the device is open and streaming.
    pub fn is_connected(&self) -> bool {
        self.capture.is_some()
    }

    fn device_err(&self, action: &'static str) -> impl FnOnce(io::Error) -> SourceError + '_ {
        move |source| SourceError::Device {
            device: self.settings.device.clone(),
            action,
            source,
        }
    }

    /// Opens, configures and starts the device.
    fn connect(&self) -> Result<Capture, SourceError> {
        let s = &self.settings;
        let device = Device::open(&s.device).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTTY) {
                SourceError::DeviceFormat {
                    device: s.device.clone(),
                    reason: "not a V4L2 device".to_string(),
                }
            } else {
                (self.device_err("open V4L2 device"))(e)
            }
        })?;
        let caps = device
            .capabilities()
            .map_err(self.device_err("query capabilities"))?
            .device_capabilities();
        if !caps.contains(CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING) {
            return Err(SourceError::DeviceFormat {
                device: s.device.clone(),
                reason: "is not a streaming video capture device".to_string(),
            });
        }
        let requested = PixFormat::new(s.width, s.height, fourcc(s.format));
        let capture = device
            .video_capture(requested)
            .map_err(self.device_err("set the capture format"))?;
        let chosen = capture.format();
        let format = from_fourcc(chosen.pixel_format().as_fourcc()).ok_or_else(|| {
            SourceError::DeviceFormat {
                device: s.device.clone(),
                reason: format!(
                    "driver chose pixel format {} for requested {}, which this build cannot \
                     convert (supported: YUYV, MJPG, GREY, RGB3)",
                    chosen.pixel_format(),
                    s.format
                ),
            }
        })?;
        let (width, height) = (chosen.width(), chosen.height());
        if (width, height, format) != (s.width, s.height, s.format) {
            log::warn!(
                "{}: asked for {}x{} {}, the driver chose {width}x{height} {format}",
                s.device.display(),
                s.width,
                s.height,
                s.format
            );
        }
        if let Err(reason) = format.check_size(width, height) {
            return Err(SourceError::DeviceFormat {
                device: s.device.clone(),
                reason: format!("driver chose an unusable format: {reason}"),
            });
        }
        let row = format.row_bytes(width).unwrap_or(0);
        let stride = (chosen.bytes_per_line() as usize).max(row);
        if let Some(interval) = s.interval {
            let (num, den) = frame_interval_fraction(interval);
            match capture.set_frame_interval(Fract::new(num, den)) {
                Ok(chosen) => log::info!(
                    "{}: frame interval {chosen} s (asked for {num}/{den} s)",
                    s.device.display()
                ),
                Err(e) => log::warn!(
                    "{}: driver refused frame interval {num}/{den} s ({e}); using its own rate",
                    s.device.display()
                ),
            }
        }
        let stream = capture
            .into_stream()
            .map_err(self.device_err("start streaming"))?;
        Ok(Capture {
            stream,
            width,
            height,
            stride,
            format,
            last_frame: Instant::now(),
        })
    }

    /// Closes the device after a failure and schedules the next attempt.
    fn fail(&mut self, error: SourceError) -> Result<Option<Frame>, SourceError> {
        self.capture = None;
        self.backoff.failed(Instant::now());
        Err(error)
    }
}

/// Whether `fd` has data to read within `timeout`; interrupted waits count as no data.
fn readable(fd: libc::c_int, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, count 1; the fd stays open for the call.
    let n = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(n > 0)
}

impl Source for V4l2Source {
    fn describe(&self) -> String {
        let s = &self.settings;
        let rate = match s.interval {
            Some(_) => rate_text(s.interval),
            None => "at the device's rate".to_string(),
        };
        format!(
            "V4L2 {} {}x{} {} {rate}",
            s.device.display(),
            s.width,
            s.height,
            s.format
        )
    }

    fn next_frame(&mut self, stop: &AtomicBool) -> Result<Option<Frame>, SourceError> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let Some(capture) = self.capture.as_mut() else {
                if let Some(at) = self.backoff.next_attempt {
                    if !sleep_until(at, stop) {
                        return Ok(None);
                    }
                }
                match self.connect() {
                    Ok(capture) => self.capture = Some(capture),
                    Err(e) => return self.fail(e),
                }
                continue;
            };
            match readable(capture.stream.as_raw_fd(), STOP_CHECK_INTERVAL) {
                Ok(false) if capture.last_frame.elapsed() < STALL_TIMEOUT => continue,
                Ok(false) => {
                    let stalled = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no frame for {} s", STALL_TIMEOUT.as_secs()),
                    );
                    return self.fail((self.device_err("capture"))(stalled));
                }
                Ok(true) => {}
                Err(e) => return self.fail((self.device_err("wait for a frame"))(e)),
            }
            let (format, width, height, stride) = (
                capture.format,
                capture.width,
                capture.height,
                capture.stride,
            );
            let dequeued = capture.stream.dequeue(|view| {
                Ok(if view.is_error() {
                    None
                } else {
                    Some(format.to_frame(&view, width, height, stride))
                })
            });
            capture.last_frame = Instant::now();
            let index = self.frame;
            self.frame += 1;
            return match dequeued {
                Err(e) => self.fail((self.device_err("capture a frame"))(e)),
                Ok(None) => Err(SourceError::DeviceFormat {
                    device: self.settings.device.clone(),
                    reason: format!("frame {index}: the driver flagged the buffer as corrupt"),
                }),
                Ok(Some(Err(source))) => Err(SourceError::Pixels {
                    origin: self.settings.device.display().to_string(),
                    frame: index,
                    source,
                }),
                Ok(Some(Ok(frame))) => {
                    self.backoff.succeeded();
                    Ok(Some(frame))
                }
            };
        }
    }
}

/// The V4L2 fourcc of a pixel format.
fn fourcc(format: PixelFormat) -> linuxvideo::format::PixelFormat {
    linuxvideo::format::PixelFormat::from_fourcc(match format {
        PixelFormat::Gray8 => *b"GREY",
        PixelFormat::Rgb24 => *b"RGB3",
        PixelFormat::Yuyv => *b"YUYV",
        PixelFormat::Mjpeg => *b"MJPG",
    })
}

/// The pixel format of a V4L2 fourcc, when this module converts it.
fn from_fourcc(code: [u8; 4]) -> Option<PixelFormat> {
    match &code {
        b"GREY" => Some(PixelFormat::Gray8),
        b"RGB3" => Some(PixelFormat::Rgb24),
        b"YUYV" => Some(PixelFormat::Yuyv),
        b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
        _ => None,
    }
}

/// A frame interval as the fraction of seconds V4L2 takes: `1/fps` for a whole rate, else
/// in whole microseconds (rounded).
fn frame_interval_fraction(interval: Duration) -> (u32, u32) {
    let fps = 1.0 / interval.as_secs_f64().max(1e-6);
    if (fps - fps.round()).abs() < 1e-3 && fps.round() >= 1.0 {
        (1, fps.round() as u32)
    } else {
        let micros = (interval.as_secs_f64() * 1e6)
            .round()
            .clamp(1.0, f64::from(u32::MAX)) as u32;
        (micros, 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_2_s_and_resets_on_a_frame() {
        let mut backoff = Backoff::new();
        assert_eq!(backoff.next_attempt, None);
        let t = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..7 {
            backoff.failed(t);
            waits.push(backoff.next_attempt.unwrap() - t);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.succeeded();
        assert_eq!(backoff.next_attempt, None);
        assert_eq!(backoff.delay, FIRST_RETRY);
    }

    #[test]
    fn fourcc_codes_round_trip() {
        for format in [
            PixelFormat::Gray8,
            PixelFormat::Rgb24,
            PixelFormat::Yuyv,
            PixelFormat::Mjpeg,
        ] {
            assert_eq!(from_fourcc(fourcc(format).as_fourcc()), Some(format));
        }
        assert_eq!(from_fourcc(*b"NV12"), None);
    }

    #[test]
    fn frame_intervals_are_whole_rates_when_possible() {
        assert_eq!(
            frame_interval_fraction(Duration::from_secs_f64(1.0 / 30.0)),
            (1, 30)
        );
        assert_eq!(frame_interval_fraction(Duration::from_millis(40)), (1, 25));
        assert_eq!(
            frame_interval_fraction(Duration::from_secs_f64(1.0 / 29.97)),
            (33367, 1_000_000)
        );
        assert_eq!(
            frame_interval_fraction(Duration::from_secs(2)),
            (2_000_000, 1_000_000)
        );
    }

    #[test]
    fn a_missing_device_fails_with_its_path_and_backs_off() {
        let settings = V4l2Settings {
            device: PathBuf::from("/nonexistent/video7"),
            width: 640,
            height: 480,
            format: PixelFormat::Yuyv,
            interval: None,
        };
        let mut source = V4l2Source::new(settings);
        let stop = AtomicBool::new(false);
        let err = source.next_frame(&stop).unwrap_err();
        assert!(!source.is_connected());
        assert_eq!(
            source.backoff.next_attempt.map(|at| at > Instant::now()),
            Some(true)
        );
        assert_eq!(source.backoff.delay, Duration::from_millis(200));
        assert!(err
            .to_string()
            .starts_with("/nonexistent/video7: cannot open V4L2 device"));
    }
}
