//! The live loop with the bundled model: frames dropped in the mailbox under a slow model
//! (counted exactly), a slow sink that never holds up inference, a failing sink, and sources
//! that end and fail. The model is real; where a test needs exact timing it holds the model's
//! start and finish behind a gate instead of relying on sleeps.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeseg::frame::Frame;
use edgeseg::live::{self, Limits, Overflow, Segmenter, SinkSlot, Stages};
use edgeseg::model::{FrameModel, FrameResult, ModelError, Package, Precision, Request};
use edgeseg::recording::{TelemetryConfig, TelemetrySink};
use edgeseg::roi::{Roi, RoiConfig};
use edgeseg::sink::{Emitted, Sink, SinkError};
use edgeseg::smoothing::{Smoother, SmoothingConfig};
use edgeseg::source::{self, Source, SourceConfig, SourceError};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeseg-live-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn model() -> FrameModel {
    let package = Package::open(&root().join("models/clipseg-phantom")).unwrap();
    let request = Request {
        prompt: Some("dark oval lesion".into()),
        ..Request::default()
    };
    FrameModel::open(package, Precision::F32, 1, &request).unwrap()
}

fn stages(segmenter: Box<dyn Segmenter>) -> Stages {
    Stages::new(
        Roi::new(&RoiConfig::default()).unwrap(),
        segmenter,
        Smoother::new(&SmoothingConfig::default()).unwrap(),
    )
}

/// The 160x120 ultrasound phantom at `fps` frames per second.
fn phantom_source(fps: f64) -> Box<dyn Source> {
    let mut config = SourceConfig::from_spec("phantom:ultrasound").unwrap();
    config.fps = Some(fps);
    config.width = Some(160);
    config.height = Some(120);
    source::open(&config).unwrap()
}

/// Runs the bundled model on `source` into `sinks` until `frames` frames are processed.
fn run_frames(source: Box<dyn Source>, sinks: Vec<SinkSlot>, frames: u64) -> live::RunReport {
    let limits = Limits {
        frames: Some(frames),
        duration: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    live::run(source, stages(Box::new(model())), sinks, limits, stop)
}

fn phantom_frame(seed: u64) -> Frame {
    edgeseg::phantom::generate(edgeseg::phantom::Modality::Ultrasound, 160, 120, seed)
        .unwrap()
        .frame
}

/// A sink that records the sequence numbers it saw, optionally taking its time.
struct Recorder {
    seen: Arc<Mutex<Vec<u64>>>,
    delay: Duration,
}

impl Sink for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn emit(&mut self, out: &Emitted) -> Result<(), SinkError> {
        std::thread::sleep(self.delay);
        self.seen.lock().unwrap().push(out.seq);
        Ok(())
    }
}

fn recorder(delay: Duration, queue: usize) -> (SinkSlot, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let slot = SinkSlot {
        sink: Box::new(Recorder {
            seen: Arc::clone(&seen),
            delay,
        }),
        queue,
        overflow: Overflow::DropOldest,
    };
    (slot, seen)
}

/// The model, held at a gate: it reports each frame it starts and waits to be released.
struct Gated {
    inner: FrameModel,
    started: Sender<()>,
    release: Receiver<()>,
}

impl Segmenter for Gated {
    fn label(&self) -> &str {
        Segmenter::label(&self.inner)
    }
    fn threshold(&self) -> f32 {
        Segmenter::threshold(&self.inner)
    }
    fn segment(&mut self, frame: &Frame) -> Result<FrameResult, ModelError> {
        // The source stops listening once it has ended; later frames need no cue.
        let _ = self.started.send(());
        self.release.recv().unwrap();
        Segmenter::segment(&mut self.inner, frame)
    }
    fn set_adapter(&mut self, name: &str) -> Result<f64, ModelError> {
        self.inner.set_adapter(name)
    }
}

/// Frames on cue: the first one at once, then a burst once the model has started on it.
struct Burst {
    burst: usize,
    sent: usize,
    model_started: Receiver<()>,
    release_model: Sender<()>,
}

impl Source for Burst {
    fn describe(&self) -> String {
        "burst".into()
    }
    fn next_frame(&mut self, _stop: &AtomicBool) -> Result<Option<Frame>, SourceError> {
        match self.sent {
            0 => {}
            n if n <= self.burst => {
                if n == 1 {
                    // Frame 0 is in the model: everything from here on waits in the mailbox.
                    self.model_started.recv().unwrap();
                }
            }
            _ => {
                // The burst is in: let the model finish frame 0 and then the newest frame.
                self.release_model.send(()).unwrap();
                self.release_model.send(()).unwrap();
                return Ok(None);
            }
        }
        self.sent += 1;
        Ok(Some(phantom_frame(self.sent as u64)))
    }
}

#[test]
fn a_slow_model_skips_to_the_newest_frame_and_counts_every_drop() {
    let (started_tx, started_rx) = channel();
    let (release_tx, release_rx) = channel();
    let gated = Gated {
        inner: model(),
        started: started_tx,
        release: release_rx,
    };
    let source = Burst {
        burst: 4,
        sent: 0,
        model_started: started_rx,
        release_model: release_tx,
    };
    let (slot, seen) = recorder(Duration::ZERO, 8);
    let report = live::run(
        Box::new(source),
        stages(Box::new(gated)),
        vec![slot],
        Limits::default(),
        Arc::new(AtomicBool::new(false)),
    );
    // Frame 0 went to the model; frames 1–4 arrived while it ran, and only the newest (4)
    // survived in the mailbox.
    assert_eq!(
        (
            report.captured,
            report.processed,
            report.dropped,
            report.failed
        ),
        (5, 2, 3, 0)
    );
    assert_eq!(*seen.lock().unwrap(), [0, 4]);
    assert!(report.source_ended);
    assert_eq!(report.sinks[0].emitted, 2);
}

#[test]
fn a_fast_source_is_accounted_for_frame_by_frame() {
    let dir = scratch("accounting");
    let telemetry = dir.join("t.jsonl");
    let sink = TelemetrySink::open(&TelemetryConfig {
        path: telemetry.clone(),
        summary: None,
        queue: 1000,
        overflow: Overflow::DropNewest,
    })
    .unwrap();
    let report = run_frames(
        phantom_source(1000.0),
        vec![SinkSlot {
            sink: Box::new(sink),
            queue: 1000,
            overflow: Overflow::DropNewest,
        }],
        30,
    );
    assert_eq!(report.processed, 30);
    assert_eq!(report.failed, 0);
    assert_eq!(report.captured, report.processed + report.dropped);
    assert!(report.dropped > 0, "a 1000 fps source outruns the model");
    // The sequence numbers the telemetry saw leave exactly `dropped` gaps.
    let seqs: Vec<u64> = fs::read_to_string(&telemetry)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.len(), 30);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let gaps = seqs[0] + seqs.windows(2).map(|w| w[1] - w[0] - 1).sum::<u64>();
    let after = report.captured - 1 - seqs[29];
    assert_eq!(gaps + after, report.dropped);
}

#[test]
fn a_slow_sink_drops_its_own_frames_and_never_holds_up_inference() {
    let (slow, slow_seen) = recorder(Duration::from_millis(40), 1);
    let (fast, fast_seen) = recorder(Duration::ZERO, 64);
    let report = run_frames(phantom_source(100.0), vec![fast, slow], 12);
    // Every processed frame reached the fast sink; the slow one dropped what it could not
    // take, and its emits plus its drops add up to the processed frames.
    assert_eq!(report.processed, 12);
    assert_eq!(report.captured, report.processed + report.dropped);
    assert_eq!(fast_seen.lock().unwrap().len(), 12);
    let slow = &report.sinks[1];
    assert_eq!(slow.emitted, slow_seen.lock().unwrap().len() as u64);
    assert_eq!(slow.emitted + slow.queue_dropped, 12);
    assert!(slow.queue_dropped > 0, "{slow:?}");
}

/// Frames from a list, as fast as they are asked for.
struct List(std::vec::IntoIter<Frame>);

impl Source for List {
    fn describe(&self) -> String {
        "list".into()
    }
    fn next_frame(&mut self, _stop: &AtomicBool) -> Result<Option<Frame>, SourceError> {
        Ok(self.0.next())
    }
}

#[test]
fn a_failing_sink_is_counted_and_the_others_carry_on() {
    let full = TelemetrySink::open(&TelemetryConfig {
        path: PathBuf::from("/dev/full"),
        summary: None,
        queue: 64,
        overflow: Overflow::DropNewest,
    })
    .unwrap();
    let (ok, ok_seen) = recorder(Duration::ZERO, 64);
    let frames: Vec<Frame> = (0..5).map(phantom_frame).collect();
    let report = live::run(
        Box::new(List(frames.into_iter())),
        stages(Box::new(model())),
        vec![
            SinkSlot {
                sink: Box::new(full),
                queue: 64,
                overflow: Overflow::DropNewest,
            },
            ok,
        ],
        Limits::default(),
        Arc::new(AtomicBool::new(false)),
    );
    let failing = &report.sinks[0];
    assert_eq!(failing.emitted, 0);
    // Every emit failed, and so did the final flush of what the writer still held.
    assert_eq!(failing.errors, report.processed + 1);
    assert!(failing.last_error.as_deref().unwrap().contains("/dev/full"));
    assert_eq!(ok_seen.lock().unwrap().len() as u64, report.processed);
}

#[test]
fn a_folder_with_a_broken_file_ends_by_itself_after_the_good_ones() {
    let dir = scratch("folder");
    for name in ["us_0000.png", "endo_0001.png"] {
        fs::copy(root().join("samples").join(name), dir.join(name)).unwrap();
    }
    fs::copy(
        root().join("tests/fixtures/images/truncated.png"),
        dir.join("b_truncated.png"),
    )
    .unwrap();
    let config = SourceConfig::from_spec(&format!("folder:{}", dir.display())).unwrap();
    let (slot, seen) = recorder(Duration::ZERO, 8);
    // Paced, so no frame is dropped in the mailbox and the counts are exact.
    let mut config = config;
    config.fps = Some(20.0);
    let report = live::run(
        source::open(&config).unwrap(),
        stages(Box::new(model())),
        vec![slot],
        Limits::default(),
        Arc::new(AtomicBool::new(false)),
    );
    assert!(report.source_ended);
    assert_eq!(report.source_errors, 1);
    assert!(report
        .last_source_error
        .as_deref()
        .unwrap()
        .contains("b_truncated.png"));
    assert_eq!((report.captured, report.processed), (2, 2));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn stop_ends_a_paced_run_promptly_and_flushes_the_sinks() {
    let stop = Arc::new(AtomicBool::new(false));
    let mut config = SourceConfig::from_spec("phantom").unwrap();
    config.fps = Some(5.0);
    let (slot, seen) = recorder(Duration::ZERO, 8);
    // Open the source and load the model first: on a loaded machine they take longer than
    // the time the run is given.
    let (source, stages) = (source::open(&config).unwrap(), stages(Box::new(model())));
    let stopper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            stop.store(true, Ordering::SeqCst);
        })
    };
    let started = std::time::Instant::now();
    let report = live::run(
        source,
        stages,
        vec![slot],
        Limits::default(),
        Arc::clone(&stop),
    );
    stopper.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!report.source_ended);
    assert!(report.processed >= 1);
    assert_eq!(seen.lock().unwrap().len() as u64, report.sinks[0].emitted);
    assert_eq!(report.sinks[0].emitted, report.processed);
}

/// A sink that records the scheduling policy of the thread it is called on.
struct PolicyProbe {
    background: bool,
    policies: Arc<Mutex<Vec<i32>>>,
}

impl Sink for PolicyProbe {
    fn name(&self) -> &str {
        "probe"
    }
    fn emit(&mut self, _out: &Emitted) -> Result<(), SinkError> {
        // SAFETY: pid 0 names the calling thread (the system call: musl's wrapper is a stub).
        let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) } as i32;
        self.policies.lock().unwrap().push(policy);
        Ok(())
    }
    fn background(&self) -> bool {
        self.background
    }
}

#[test]
fn a_background_sink_runs_in_the_idle_scheduling_class_and_the_others_do_not() {
    let probe = |background| {
        let policies = Arc::new(Mutex::new(Vec::new()));
        let slot = SinkSlot {
            sink: Box::new(PolicyProbe {
                background,
                policies: Arc::clone(&policies),
            }),
            queue: 8,
            overflow: Overflow::DropOldest,
        };
        (slot, policies)
    };
    let (snapshots, snapshot_policies) = probe(true);
    let (link, link_policies) = probe(false);
    let report = run_frames(phantom_source(100.0), vec![snapshots, link], 3);
    assert_eq!(report.processed, 3);
    let snapshot_policies = snapshot_policies.lock().unwrap();
    let link_policies = link_policies.lock().unwrap();
    assert_eq!(snapshot_policies.len(), 3);
    assert!(snapshot_policies.iter().all(|&p| p == libc::SCHED_IDLE));
    assert_eq!(link_policies.len(), 3);
    assert!(link_policies.iter().all(|&p| p == libc::SCHED_OTHER));
}
