//! The serial link: [`SerialSink`] sends every processed frame's mask (and a heartbeat) over a
//! UART in the wire format of [`crate::protocol`]; [`listen`] and [`listen_port`] are the
//! receiving end, for checking a link from a terminal; [`Loopback`] is a pseudo-terminal pair
//! with a built-in receiver, standing in for a cable. [`SerialConfig`] is the sink's
//! configuration; [`mask_payload`] is the rule that picks a mask's encoding for the line rate.

mod listen;
mod loopback;
mod sink;

use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

use crate::frame::Mask;
use crate::live::Overflow;
use crate::protocol::{self, Payload};

pub use listen::{listen, listen_port, ListenSummary, MAX_FRAME_BYTES};
pub use loopback::Loopback;
pub use sink::SerialSink;

/// Share of the line's byte rate that mask messages may use; the rest is headroom for
/// heartbeats, start and stop bits of a slower-than-nominal UART, and frame-rate jitter.
pub const LINK_SHARE: f64 = 0.8;
/// Frame rate assumed while the loop has not measured one yet.
pub const DEFAULT_FPS: f64 = 30.0;

/// How masks are encoded on the link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Row runs when they fit the frame's share of the line rate, else contours simplified to
    /// fit it.
    #[default]
    Auto,
    /// Always row runs (exact; the link may fall behind when the line is too slow).
    Rle,
    /// Always contours, simplified to fit the frame's share of the line rate.
    Contour,
}

/// Configuration of the serial sink (a `[serial]` table of the run configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Device path of the port, e.g. `/dev/ttyUSB0` or `/dev/ttyAMA0`.
    pub port: PathBuf,
    /// Line rate in bits per second; the link runs 8N1, so a byte takes 10 bits. Default 115200.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Mask encoding: `auto` (default), `rle` or `contour`. `auto` sends row runs when a
    /// message's size × the frame rate fits in 80 % of baud / 10 bytes per second, else contour
    /// polygons simplified to fit that share.
    #[serde(default)]
    pub encoding: Encoding,
    /// Period of the status (heartbeat) message in milliseconds, at least 1. Default 1000. A
    /// status message also goes out when the run ends.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Length of the live loop's queue of frames waiting for this sink, at least 1. Default 2.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// What a full queue does with the next frame: `drop-oldest` (default: the newest mask
    /// goes out next) or `drop-newest`.
    #[serde(default)]
    pub overflow: Overflow,
    /// Cable-free mode for demos and checks: open a pseudo-terminal pair, make `port` a
    /// symbolic link to its terminal side, and decode everything the sink sends with a built-in
    /// receiver that writes `edgeseg listen`'s lines to this file ([`Loopback`]).
    #[serde(default)]
    pub loopback_log: Option<PathBuf>,
    /// Longest a write may wait for the port to take bytes, in milliseconds, at least 1.
    /// Default 500. A write that times out drops the rest of its message.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// First wait before reopening a lost port, in milliseconds. Default 100.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest wait between reopening attempts (the wait doubles after each failure), in
    /// milliseconds, at least `reconnect_min_ms`. Default 5000.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_baud() -> u32 {
    115_200
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_queue() -> usize {
    2
}
fn default_write_timeout_ms() -> u64 {
    500
}
fn default_reconnect_min_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    5000
}

impl SerialConfig {
    /// The configuration for `port` with every other setting at its default.
    pub fn new(port: impl Into<PathBuf>) -> SerialConfig {
        SerialConfig {
            port: port.into(),
            baud: default_baud(),
            encoding: Encoding::default(),
            heartbeat_ms: default_heartbeat_ms(),
            queue: default_queue(),
            overflow: Overflow::default(),
            loopback_log: None,
            write_timeout_ms: default_write_timeout_ms(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }

    /// Checks the values that deserialisation cannot: a UTF-8 port path, and non-zero rates,
    /// periods and lengths.
    pub fn validate(&self) -> Result<(), SerialError> {
        let bad = |reason: String| {
            Err(SerialError::Config {
                port: self.port.clone(),
                reason,
            })
        };
        if self.port.to_str().is_none_or(str::is_empty) {
            return bad("the port path is empty or not UTF-8".into());
        }
        if self.baud == 0 {
            return bad("baud must be above 0".into());
        }
        if self.heartbeat_ms == 0 || self.queue == 0 || self.write_timeout_ms == 0 {
            return bad(format!(
                "heartbeat_ms ({}), queue ({}) and write_timeout_ms ({}) must be at least 1",
                self.heartbeat_ms, self.queue, self.write_timeout_ms
            ));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return bad(format!(
                "reconnect_max_ms ({}) is below reconnect_min_ms ({})",
                self.reconnect_max_ms, self.reconnect_min_ms
            ));
        }
        Ok(())
    }
}

/// What went wrong on a serial link.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SerialError {
    /// The configuration has a value the link cannot use.
    #[error("serial port {}: bad configuration: {reason}", port.display())]
    Config { port: PathBuf, reason: String },
    /// The port could not be opened (missing, busy, not a terminal).
    #[error("serial port {}: cannot open: {source}", port.display())]
    Open {
        port: PathBuf,
        source: serialport::Error,
    },
    /// A write failed for a reason other than a timeout: the port is closed and reopened later.
    #[error("serial port {} lost: {source}; reconnecting", port.display())]
    Lost {
        port: PathBuf,
        source: std::io::Error,
    },
    /// The port is closed and was not reopened on this call; the message was not sent.
    #[error("serial port {} not connected ({reason}); next attempt in {retry_ms} ms", port.display())]
    Unavailable {
        port: PathBuf,
        reason: String,
        retry_ms: u64,
    },
    /// The port did not take the bytes within the write timeout (a stalled link or flow
    /// control); the rest of the message was dropped.
    #[error("serial port {}: write timed out after {timeout_ms} ms; message dropped", port.display())]
    Timeout { port: PathBuf, timeout_ms: u64 },
    /// Reading a port, or writing the listener's lines, failed.
    #[error("serial port {}: {source}", port.display())]
    Listen {
        port: PathBuf,
        source: std::io::Error,
    },
}

/// Wire bytes one mask message may take at `baud` (8N1) and `fps` frames per second: 80 % of
/// the line's byte rate divided by the frame rate. A frame rate that is not a positive number
/// (none measured yet) counts as [`DEFAULT_FPS`].
pub fn frame_budget(baud: u32, fps: f64) -> usize {
    let fps = if fps.is_finite() && fps > 0.0 {
        fps
    } else {
        DEFAULT_FPS
    };
    (LINK_SHARE * f64::from(baud) / 10.0 / fps) as usize
}

/// The payload for `mask` under `encoding` when a message may take `budget` wire bytes (see
/// [`frame_budget`]): row runs for [`Encoding::Rle`], and for [`Encoding::Auto`] when they fit;
/// otherwise contours simplified to fit ([`protocol::contours`]).
pub fn mask_payload(mask: &Mask, encoding: Encoding, budget: usize) -> Payload {
    if encoding != Encoding::Contour {
        let rows = protocol::rle_rows(mask);
        if encoding == Encoding::Rle
            || protocol::max_wire_len(protocol::rle_payload_len(&rows)) <= budget
        {
            return Payload::Rle(rows);
        }
    }
    // The largest payload whose message fits the budget.
    let mut payload = budget.saturating_sub(protocol::max_wire_len(0) + budget / 254);
    while payload > 0 && protocol::max_wire_len(payload) > budget {
        payload -= 1;
    }
    Payload::Contours(protocol::contours(mask, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let config: SerialConfig = toml::from_str(r#"port = "/dev/ttyUSB0""#).unwrap();
        assert_eq!(config, SerialConfig::new("/dev/ttyUSB0"));
        assert_eq!(config.baud, 115_200);
        assert_eq!(config.heartbeat_ms, 1000);
        assert_eq!(config.queue, 2);
        assert!(config.validate().is_ok());
        let config: SerialConfig =
            toml::from_str("port = \"/dev/ttyS1\"\nbaud = 9600\nencoding = \"contour\"").unwrap();
        assert_eq!((config.baud, config.encoding), (9600, Encoding::Contour));
        let err = toml::from_str::<SerialConfig>("port = \"/dev/ttyS1\"\nbaud_rate = 9600")
            .unwrap_err()
            .to_string();
        assert!(err.contains("baud_rate"), "{err}");
        assert!(toml::from_str::<SerialConfig>("port = \"x\"\nencoding = \"png\"").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let mut config = SerialConfig::new("/dev/ttyUSB0");
        config.baud = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("baud must be above 0"), "{err}");
        let mut config = SerialConfig::new("/dev/ttyUSB0");
        config.reconnect_min_ms = 10_000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("reconnect_max_ms (5000)"), "{err}");
        assert!(SerialConfig::new("").validate().is_err());
    }

    #[test]
    fn the_budget_follows_baud_and_frame_rate() {
        // 115200 baud: 11520 bytes/s, 80 % of that over 30 frames.
        assert_eq!(frame_budget(115_200, 30.0), 307);
        assert_eq!(frame_budget(115_200, 0.0), 307);
        assert_eq!(frame_budget(115_200, f64::NAN), 307);
        assert_eq!(frame_budget(921_600, 10.0), 7372);
    }

    #[test]
    fn auto_picks_runs_when_they_fit_and_contours_otherwise() {
        let side = 96u32;
        let bits = (0..side * side)
            .map(|i| {
                let (x, y) = (f64::from(i % side) - 48.0, f64::from(i / side) - 48.0);
                x * x + y * y < 900.0
            })
            .collect();
        let mask = Mask::new(side, side, bits).unwrap();
        let runs = protocol::max_wire_len(protocol::rle_payload_len(&protocol::rle_rows(&mask)));
        assert!(matches!(
            mask_payload(&mask, Encoding::Auto, runs),
            Payload::Rle(_)
        ));
        let Payload::Contours(polygons) = mask_payload(&mask, Encoding::Auto, runs - 1) else {
            panic!("runs do not fit, contours expected")
        };
        assert_eq!(polygons.len(), 1);
        for budget in [200, 100, 60] {
            let Payload::Contours(polygons) = mask_payload(&mask, Encoding::Contour, budget) else {
                panic!("contours expected")
            };
            let len = protocol::max_wire_len(protocol::contour_payload_len(&polygons));
            assert!(len <= budget, "{budget}: {len}");
        }
        assert!(matches!(
            mask_payload(&mask, Encoding::Rle, 10),
            Payload::Rle(_)
        ));
    }
}
