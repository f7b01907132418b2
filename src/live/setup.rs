//! Turns a [`Profile`] into the parts of a run: the source, the model's stages and the sinks.
//! Everything that can be checked before the first frame is checked here, so a bad profile,
//! model or device fails the start with one clear error instead of a run that does nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::display::{Backend, DisplaySink};
use crate::model::{FrameModel, Package, Request};
use crate::profile::Profile;
use crate::recording::{FilesSink, TelemetrySink};
use crate::roi::Roi;
use crate::serial::{Loopback, SerialSink};
use crate::smoothing::Smoother;
use crate::source::{self, Source};

use super::control::{self, Control};
use super::idle::{self, IdleLatency};
use super::pipeline::{Limits, SinkSlot};
use super::stages::Stages;

/// Everything a run needs, opened and checked.
pub struct Setup {
    pub source: Box<dyn Source>,
    pub stages: Stages,
    pub sinks: Vec<SinkSlot>,
    pub limits: Limits,
    /// The built-in receiver of a loopback serial link, if the profile asks for one.
    pub loopback: Option<Loopback>,
    /// The model package's folder and name.
    pub model_dir: PathBuf,
    pub model: String,
    /// Time to load and optimise the model.
    pub load: Duration,
    /// The profile's CPU idle-latency request, held while this field lives.
    pub idle_latency: Option<IdleLatency>,
}

/// Opens every part of the run `profile` describes.
pub fn setup(profile: &Profile) -> anyhow::Result<Setup> {
    let dir = profile
        .model
        .path
        .clone()
        .unwrap_or_else(Package::default_dir);
    let start = Instant::now();
    let package = Package::open(&dir)?;
    let m = &profile.model;
    let request = Request {
        prompt: (!m.prompt.is_empty()).then(|| m.prompt.clone()),
        adapter: m.adapter.clone(),
        task: m.task.clone(),
        modality: m.modality.clone(),
        ..Request::default()
    };
    let segmenter = FrameModel::open(package, m.precision, m.threads, &request)?;
    let load = start.elapsed();
    let model = segmenter.package().name().to_string();
    let roi = Roi::new(&profile.roi).context("[roi]")?.in_background();
    let smoother = Smoother::new(&profile.smoothing).context("[smoothing]")?;
    let mut stages = Stages::new(roi, Box::new(segmenter), smoother);
    if let Some(spec) = &m.control {
        let channel = control::spawn(&Control::parse(spec))
            .with_context(|| format!("[model] control = {spec:?}"))?;
        stages = stages.with_control(channel);
    }

    let mut sinks = Vec::new();
    if let Some(d) = profile
        .display
        .as_ref()
        .filter(|d| d.backend != Backend::None)
    {
        sinks.push(SinkSlot {
            sink: Box::new(DisplaySink::open(d)?),
            queue: d.queue,
            overflow: d.overflow,
        });
    }
    let mut loopback = None;
    if let Some(s) = &profile.serial {
        if let Some(log) = &s.loopback_log {
            loopback = Some(
                Loopback::start(&s.port, log)
                    .with_context(|| format!("serial loopback at {}", s.port.display()))?,
            );
        }
        sinks.push(SinkSlot {
            sink: Box::new(SerialSink::open(s.clone())?),
            queue: s.queue,
            overflow: s.overflow,
        });
    }
    if let Some(f) = &profile.files {
        sinks.push(SinkSlot {
            sink: Box::new(FilesSink::open(f).map_err(|e| anyhow::anyhow!(e))?),
            queue: f.queue,
            overflow: f.overflow,
        });
    }
    if let Some(t) = &profile.telemetry {
        sinks.push(SinkSlot {
            sink: Box::new(TelemetrySink::open(t).map_err(|e| anyhow::anyhow!(e))?),
            queue: t.queue,
            overflow: t.overflow,
        });
    }
    let source = source::open(&profile.source)?;
    let idle_latency = profile.run.idle_latency_us.and_then(|us| {
        IdleLatency::hold(us)
            .map_err(|e| {
                log::warn!(
                    "run.idle_latency_us: cannot hold {}: {e}; CPUs may wake slowly between frames",
                    idle::DEVICE
                )
            })
            .ok()
    });
    Ok(Setup {
        source,
        stages,
        sinks,
        limits: Limits {
            frames: profile.run.frames,
            duration: profile.run.seconds.map(Duration::from_secs_f64),
        },
        loopback,
        model_dir: dir,
        model,
        load,
        idle_latency,
    })
}
