//! What the live loop hands to its outputs: one [`Emitted`] record per processed frame, and
//! the [`Sink`] trait every output (display, serial link, files, telemetry) implements.
//!
//! Each sink runs on its own thread behind a bounded queue, so a slow or failing sink never
//! blocks inference. A sink reports a failed emit as an error value; the loop counts it, says
//! what happened and keeps calling the sink, which may reconnect on a later call.

use std::sync::Arc;

use crate::frame::{Frame, Mask};

/// An error from a sink, as reported by the loop.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Microsecond timestamps of one frame's way through the loop, counted from the start of the
/// run (one monotonic clock for every stage and sink).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timestamps {
    /// The source handed the frame over.
    pub capture_us: u64,
    /// The inference thread took the frame from the mailbox and started preprocessing it.
    pub preprocess_start_us: u64,
    /// The model input tensor was ready.
    pub preprocess_end_us: u64,
    /// The model returned.
    pub inference_end_us: u64,
    /// The mask was ready at frame size (after smoothing and mapping back to the full frame).
    pub postprocess_end_us: u64,
}

/// Counters of the loop at the time a record is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames the source delivered.
    pub captured: u64,
    /// Frames segmented and handed to the sinks.
    pub processed: u64,
    /// Frames replaced in the mailbox by a newer one before inference took them.
    pub dropped: u64,
}

/// One processed frame, as every sink sees it. Cloning is cheap: pixels are shared.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The frame's number in capture order, from 0. Gaps are frames dropped before inference.
    pub seq: u64,
    /// When each stage finished.
    pub timestamps: Timestamps,
    /// The frame as captured, full size.
    pub frame: Arc<Frame>,
    /// The mask, at the frame's size and position.
    pub mask: Arc<Mask>,
    /// What was segmented (the prompt), for labels.
    pub label: Arc<str>,
    /// Mask area in pixels.
    pub area_px: usize,
    /// Mask area in mm², when the frame carries a pixel spacing.
    pub area_mm2: Option<f64>,
    /// Loop counters including this frame.
    pub counters: Counters,
    /// Processed frames per second over the last second or so, for on-screen text.
    pub fps: f64,
    /// End-to-end latency (emit − capture) of the previous frame at its first sink, in ms,
    /// for on-screen text.
    pub latency_ms: f64,
}

/// An output of the live loop.
pub trait Sink: Send {
    /// A short name for logs and the summary: "display", "serial", "files", "telemetry".
    fn name(&self) -> &str;

    /// Emits one frame. An error is reported and counted by the loop; the sink stays in use,
    /// and a later call may reconnect.
    fn emit(&mut self, out: &Emitted) -> Result<(), SinkError>;

    /// Whether the sink's work is off the latency path (snapshots a person looks at later):
    /// the loop then runs its thread in the idle scheduling class ([`crate::background`]), so
    /// it never delays a frame's other outputs. `false` by default.
    fn background(&self) -> bool {
        false
    }

    /// Called when no frame has arrived for about a second, with the loop's counters: time for
    /// heartbeats and reconnect attempts. Does nothing by default.
    fn idle(&mut self, _counters: Counters) -> Result<(), SinkError> {
        Ok(())
    }

    /// Called once when the run ends, with the final counters: flush and close.
    fn finish(&mut self, _counters: Counters) -> Result<(), SinkError> {
        Ok(())
    }
}
