//! [`SerialSink`]: the live loop's output to a serial port. One mask message per emitted frame,
//! a status message every `heartbeat_ms` and at the end of the run; a port that goes away is
//! reported once as lost and reopened on later calls with a doubling back-off, each call
//! returning within a few milliseconds while the port is absent.

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use serialport::SerialPort;

use crate::protocol::{self, Message, Payload, DELIMITER};
use crate::sink::{Counters, Emitted, Sink, SinkError};

use super::{frame_budget, mask_payload, SerialConfig, SerialError};

/// A [`Sink`] writing masks to a serial port. See [`SerialConfig`] for the settings.
pub struct SerialSink {
    config: SerialConfig,
    port: Option<Box<dyn SerialPort>>,
    /// Send a delimiter before the next message: after (re)opening the port or an interrupted
    /// write, so the receiver drops whatever partial frame it holds.
    resync: bool,
    /// Wait before the next reopening attempt, and when it is due.
    backoff: Duration,
    next_attempt: Instant,
    last_status: Instant,
    /// Sequence number and capture time of the last mask message, repeated in status messages.
    last_seq: u32,
    last_capture_us: u64,
}

impl SerialSink {
    /// Checks `config` and opens the port now: an error names a port that is missing, busy or
    /// not a terminal, so a wrong path is caught at start-up.
    pub fn open(config: SerialConfig) -> Result<SerialSink, SerialError> {
        let mut sink = SerialSink::new(config)?;
        sink.port = Some(sink.open_port()?);
        Ok(sink)
    }

    /// Checks `config` without opening the port: the first call to [`Sink::emit`] (or
    /// [`Sink::idle`]) opens it, for a device that is plugged in after the run starts.
    pub fn new(config: SerialConfig) -> Result<SerialSink, SerialError> {
        config.validate()?;
        let now = Instant::now();
        Ok(SerialSink {
            backoff: Duration::from_millis(config.reconnect_min_ms),
            config,
            port: None,
            resync: true,
            next_attempt: now,
            last_status: now,
            last_seq: 0,
            last_capture_us: 0,
        })
    }

    /// Whether the port is open (it was opened and no write has failed since).
    pub fn is_connected(&self) -> bool {
        self.port.is_some()
    }

    fn open_port(&self) -> Result<Box<dyn SerialPort>, SerialError> {
        let path = self.config.port.to_string_lossy();
        serialport::new(path, self.config.baud)
            .timeout(Duration::from_millis(self.config.write_timeout_ms))
            .open()
            .map_err(|source| SerialError::Open {
                port: self.config.port.clone(),
                source,
            })
    }

    /// Makes sure the port is open: reopens it when the back-off allows (or `force`), else says
    /// when the next attempt is due.
    fn connect(&mut self, force: bool) -> Result<(), SerialError> {
        if self.port.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if !force && now < self.next_attempt {
            return Err(SerialError::Unavailable {
                port: self.config.port.clone(),
                reason: "waiting before the next attempt".into(),
                retry_ms: (self.next_attempt - now).as_millis() as u64,
            });
        }
        match self.open_port() {
            Ok(port) => {
                self.port = Some(port);
                self.resync = true;
                self.backoff = Duration::from_millis(self.config.reconnect_min_ms);
                Ok(())
            }
            Err(err) => {
                let wait = self.backoff;
                self.next_attempt = now + wait;
                self.backoff = (wait * 2)
                    .max(Duration::from_millis(1))
                    .min(Duration::from_millis(self.config.reconnect_max_ms));
                let reason = match err {
                    SerialError::Open { source, .. } => format!("cannot open: {source}"),
                    other => other.to_string(),
                };
                Err(SerialError::Unavailable {
                    port: self.config.port.clone(),
                    reason,
                    retry_ms: wait.as_millis() as u64,
                })
            }
        }
    }

    /// Writes one message; on failure closes the port (unless the write only timed out).
    fn send(&mut self, msg: &Message) -> Result<(), SerialError> {
        let Some(port) = self.port.as_mut() else {
            return Err(SerialError::Unavailable {
                port: self.config.port.clone(),
                reason: "not open".into(),
                retry_ms: 0,
            });
        };
        let mut wire = Vec::new();
        if self.resync {
            wire.push(DELIMITER);
        }
        wire.extend_from_slice(&protocol::encode(msg));
        match port.write_all(&wire) {
            Ok(()) => {
                self.resync = false;
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::TimedOut => {
                self.resync = true;
                Err(SerialError::Timeout {
                    port: self.config.port.clone(),
                    timeout_ms: self.config.write_timeout_ms,
                })
            }
            Err(source) => {
                self.port = None;
                self.next_attempt = Instant::now() + self.backoff;
                Err(SerialError::Lost {
                    port: self.config.port.clone(),
                    source,
                })
            }
        }
    }

    /// Sends a status message when one is due (or `force`).
    fn heartbeat(&mut self, counters: Counters, force: bool) -> Result<(), SerialError> {
        let now = Instant::now();
        if !force && now < self.last_status + Duration::from_millis(self.config.heartbeat_ms) {
            return Ok(());
        }
        self.last_status = now;
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        self.send(&Message {
            seq: self.last_seq,
            capture_us: self.last_capture_us,
            width: 0,
            height: 0,
            flags: 0,
            payload: Payload::Status {
                processed: clamp(counters.processed),
                dropped: clamp(counters.dropped),
            },
        })
    }
}

impl Sink for SerialSink {
    fn name(&self) -> &str {
        "serial"
    }

    /// Sends the frame's mask (seq = the frame's number, truncated to 32 bits; its capture
    /// time), then a status message if one is due. The encoding follows the configuration and
    /// the loop's measured frame rate ([`mask_payload`], [`frame_budget`]).
    fn emit(&mut self, out: &Emitted) -> Result<(), SinkError> {
        self.connect(false)?;
        let mask = &out.mask;
        let budget = frame_budget(self.config.baud, out.fps);
        let msg = Message {
            seq: out.seq as u32,
            capture_us: out.timestamps.capture_us,
            // Frame sides are at most MAX_SIDE, which fits u16 (checked in `protocol`).
            width: mask.width() as u16,
            height: mask.height() as u16,
            flags: 0,
            payload: mask_payload(mask, self.config.encoding, budget),
        };
        self.last_seq = msg.seq;
        self.last_capture_us = msg.capture_us;
        self.send(&msg)?;
        self.heartbeat(out.counters, false)?;
        Ok(())
    }

    /// Reopens a lost port when the back-off allows, and sends a status message if one is due.
    /// While the port is closed and no attempt is due, does nothing.
    fn idle(&mut self, counters: Counters) -> Result<(), SinkError> {
        if self.port.is_none() && Instant::now() < self.next_attempt {
            return Ok(());
        }
        self.connect(false)?;
        Ok(self.heartbeat(counters, false)?)
    }

    /// Sends a final status message (reopening the port once if it is closed), then closes it.
    fn finish(&mut self, counters: Counters) -> Result<(), SinkError> {
        let sent = self
            .connect(true)
            .and_then(|()| self.heartbeat(counters, true));
        self.port = None;
        Ok(sent?)
    }
}
