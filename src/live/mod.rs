//! The live loop: frames from a [`crate::source::Source`] through the model to every
//! [`crate::sink::Sink`], newest frame first, with every stage timed.
//!
//! - [`queue`]: the bounded, never-blocking hand-over queue (the mailbox is one of them).
//! - [`stages`]: region of interest → model → smoothing → full-frame mask, for one frame.
//! - [`pipeline`]: the threads and the accounting.
//! - [`report`]: the end-of-run summary (latency percentiles from [`crate::histogram`]).
//! - [`setup`](mod@setup): a device profile turned into a source, stages and sinks.
//! - [`control`]: `adapter NAME` lines from stdin or a control file.
//! - [`idle`]: the CPU idle-latency request a profile can hold while it runs.

pub mod control;
pub mod idle;
pub mod pipeline;
pub mod queue;
pub mod report;
pub mod setup;
pub mod stages;

pub use pipeline::{run, Limits, SinkSlot};
pub use queue::{Overflow, Pop, Queue};
pub use report::RunReport;
pub use setup::{setup, Setup};
pub use stages::{AdapterSwitch, Segmenter, Stages};
