//! The live loop: a capture thread, an inference thread and one thread per sink.
//!
//! ```text
//! source ─▶ capture thread ─▶ mailbox (1 slot, newest wins) ─▶ inference thread ─▶ sink queues ─▶ sink threads
//! ```
//! - The capture thread stamps each frame as the source hands it over and puts it in the
//!   mailbox; a frame still waiting there is replaced and counted as dropped, so a slow model
//!   makes the loop skip frames, never fall behind.
//! - The inference thread takes the newest frame and runs [`Stages::process`]; a frame that
//!   fails is reported and counted, and the loop goes on.
//! - Each sink has its own bounded queue with a drop policy; pushing never blocks inference.
//!   Sink errors are reported and counted; the sink is called again with the next frame. A
//!   sink whose work is off the latency path ([`Sink::background`]) runs in the idle
//!   scheduling class, so it never holds a CPU another sink's frame is waiting for.
//! - Source errors are reported and counted; the source is asked again after a back-off (50 ms
//!   doubling to 2 s).
//!
//! Every frame is accounted for: `captured = processed + dropped + failed` when the run ends
//! (a frame still in the mailbox at the end counts as dropped).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::background;
use crate::frame::Frame;
use crate::sink::{Counters, Emitted, Sink, Timestamps};
use crate::source::pacing::sleep_until;
use crate::source::Source;

use super::queue::{Overflow, Pop, Queue};
use super::report::{RunReport, SinkReport, StageReport};
use super::stages::Stages;
use crate::histogram::Histogram;

/// A sink with its queue settings.
pub struct SinkSlot {
    pub sink: Box<dyn Sink>,
    /// Frames the sink's queue holds while the sink is busy.
    pub queue: usize,
    /// What a full queue does with the next frame.
    pub overflow: Overflow,
}

/// When the run stops by itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after this many processed frames.
    pub frames: Option<u64>,
    /// Stop after this much time.
    pub duration: Option<Duration>,
}

/// A captured frame on its way to inference.
struct Captured {
    seq: u64,
    capture_us: u64,
    frame: Frame,
}

#[derive(Default)]
struct Counts {
    captured: AtomicU64,
    processed: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    source_errors: AtomicU64,
    /// End-to-end latency of the last frame at the first sink, µs.
    last_latency_us: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> Counters {
        Counters {
            captured: self.captured.load(Ordering::SeqCst),
            processed: self.processed.load(Ordering::SeqCst),
            dropped: self.dropped.load(Ordering::SeqCst),
        }
    }
}

#[derive(Default)]
struct SinkStats {
    emitted: u64,
    queue_dropped: u64,
    errors: u64,
    last_error: Option<String>,
    emit: Histogram,
    end_to_end: Histogram,
    overhead: Histogram,
}

#[derive(Default)]
struct Stats {
    wait: Histogram,
    preprocess: Histogram,
    inference: Histogram,
    postprocess: Histogram,
    first_capture_us: Option<u64>,
    last_done_us: u64,
    last_source_error: Option<String>,
    last_failure: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the loop until the source ends, a limit is reached or `stop` is set (Ctrl-C), then
/// flushes the sinks and returns what happened.
pub fn run(
    mut source: Box<dyn Source>,
    mut stages: Stages,
    sinks: Vec<SinkSlot>,
    limits: Limits,
    stop: Arc<AtomicBool>,
) -> RunReport {
    let epoch = Instant::now();
    let now_us = move || epoch.elapsed().as_micros() as u64;
    let source_name = source.describe();
    let label: Arc<str> = Arc::from(stages.label());
    let mailbox: Queue<Captured> = Queue::new(1, Overflow::DropOldest);
    let counts = Counts::default();
    let stats = Mutex::new(Stats::default());
    let queues: Vec<Queue<Emitted>> = sinks
        .iter()
        .map(|s| Queue::new(s.queue, s.overflow))
        .collect();
    let names: Vec<String> = sinks.iter().map(|s| s.sink.name().to_string()).collect();
    let sink_stats: Vec<Mutex<SinkStats>> = sinks.iter().map(|_| Mutex::default()).collect();
    let mut source_ended = false;

    thread::scope(|scope| {
        // Sinks.
        for (i, slot) in sinks.into_iter().enumerate() {
            let (queue, st, counts) = (&queues[i], &sink_stats[i], &counts);
            let mut sink = slot.sink;
            thread::Builder::new()
                .name(format!("sink-{}", sink.name()))
                .spawn_scoped(scope, move || {
                    if sink.background() {
                        background::lower(&format!("{} sink", sink.name()));
                    }
                    loop {
                        match queue.pop(Duration::from_secs(1)) {
                            Pop::Item(out) => {
                                let start = now_us();
                                let result = sink.emit(&out);
                                let end = now_us();
                                let mut st = lock(st);
                                match result {
                                    Ok(()) => {
                                        st.emitted += 1;
                                        st.emit.record(end - start);
                                        let e2e = end.saturating_sub(out.timestamps.capture_us);
                                        st.end_to_end.record(e2e);
                                        let ts = out.timestamps;
                                        let inference = ts.inference_end_us - ts.preprocess_end_us;
                                        st.overhead.record(e2e.saturating_sub(inference));
                                        if i == 0 {
                                            counts.last_latency_us.store(e2e, Ordering::SeqCst);
                                        }
                                    }
                                    Err(e) => {
                                        st.errors += 1;
                                        if st.errors.is_power_of_two() {
                                            log::warn!(
                                                "{} sink: {e} ({} errors so far)",
                                                sink.name(),
                                                st.errors
                                            );
                                        }
                                        st.last_error = Some(e.to_string());
                                    }
                                }
                            }
                            Pop::Timeout => {
                                if let Err(e) = sink.idle(counts.snapshot()) {
                                    log::warn!("{} sink: {e}", sink.name());
                                    lock(st).last_error = Some(e.to_string());
                                }
                            }
                            Pop::Closed => {
                                if let Err(e) = sink.finish(counts.snapshot()) {
                                    log::warn!("{} sink: {e}", sink.name());
                                    let mut st = lock(st);
                                    st.errors += 1;
                                    st.last_error = Some(e.to_string());
                                }
                                return;
                            }
                        }
                    }
                })
                .expect("spawning a sink thread");
        }

        // Capture.
        let capture = {
            let (mailbox, counts, stats, stop) = (&mailbox, &counts, &stats, &stop);
            thread::Builder::new()
                .name("capture".into())
                .spawn_scoped(scope, move || {
                    let mut consecutive_errors = 0u32;
                    let mut ended = false;
                    while !stop.load(Ordering::SeqCst) {
                        if limits.duration.is_some_and(|d| epoch.elapsed() >= d) {
                            stop.store(true, Ordering::SeqCst);
                            break;
                        }
                        match source.next_frame(stop) {
                            Ok(Some(frame)) => {
                                consecutive_errors = 0;
                                let capture_us = now_us();
                                let seq = counts.captured.fetch_add(1, Ordering::SeqCst);
                                lock(stats).first_capture_us.get_or_insert(capture_us);
                                let item = Captured {
                                    seq,
                                    capture_us,
                                    frame,
                                };
                                if mailbox.push(item).is_some() {
                                    counts.dropped.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Ok(None) => {
                                ended = !stop.load(Ordering::SeqCst);
                                if ended {
                                    log::info!("{}: source ended", source.describe());
                                }
                                break;
                            }
                            Err(e) => {
                                let n = counts.source_errors.fetch_add(1, Ordering::SeqCst) + 1;
                                if n.is_power_of_two() {
                                    log::warn!("source: {e} ({n} errors so far)");
                                }
                                lock(stats).last_source_error = Some(e.to_string());
                                if consecutive_errors > 0 {
                                    let backoff = 50u64 << (consecutive_errors - 1).min(6);
                                    sleep_until(
                                        Instant::now() + Duration::from_millis(backoff.min(2000)),
                                        stop,
                                    );
                                }
                                consecutive_errors += 1;
                            }
                        }
                    }
                    mailbox.close();
                    ended
                })
                .expect("spawning the capture thread")
        };

        // Inference, on this thread.
        let mut recent: VecDeque<u64> = VecDeque::new();
        while !stop.load(Ordering::SeqCst) {
            let item = match mailbox.pop(Duration::from_millis(100)) {
                Pop::Item(item) => item,
                Pop::Timeout => continue,
                Pop::Closed => break,
            };
            let start_us = now_us();
            let processed = match stages.process(&item.frame) {
                Ok(p) => p,
                Err(e) => {
                    let n = counts.failed.fetch_add(1, Ordering::SeqCst) + 1;
                    if n.is_power_of_two() {
                        log::warn!("frame {}: {e:#} ({n} failures so far)", item.seq);
                    }
                    lock(&stats).last_failure = Some(format!("frame {}: {e:#}", item.seq));
                    continue;
                }
            };
            let done_us = now_us();
            let m = processed.micros;
            let timestamps = Timestamps {
                capture_us: item.capture_us,
                preprocess_start_us: start_us,
                preprocess_end_us: start_us + m.preprocess,
                inference_end_us: start_us + m.preprocess + m.inference,
                postprocess_end_us: done_us,
            };
            {
                let mut st = lock(&stats);
                st.wait.record(start_us.saturating_sub(item.capture_us));
                st.preprocess.record(m.preprocess);
                st.inference.record(m.inference);
                st.postprocess.record(m.postprocess);
                st.last_done_us = done_us;
            }
            recent.push_back(done_us);
            while recent.front().is_some_and(|&t| done_us - t > 1_000_000) {
                recent.pop_front();
            }
            let fps = match (recent.front(), recent.len()) {
                (Some(&first), n) if n > 1 && done_us > first => {
                    (n - 1) as f64 * 1e6 / (done_us - first) as f64
                }
                _ => 0.0,
            };
            let area_px = processed.mask.area();
            let area_mm2 = item
                .frame
                .spacing()
                .map(|s| area_px as f64 * s.pixel_area_mm2());
            counts.processed.fetch_add(1, Ordering::SeqCst);
            let out = Emitted {
                seq: item.seq,
                timestamps,
                frame: Arc::new(item.frame),
                mask: Arc::new(processed.mask),
                label: Arc::clone(&label),
                area_px,
                area_mm2,
                counters: counts.snapshot(),
                fps,
                latency_ms: counts.last_latency_us.load(Ordering::SeqCst) as f64 / 1e3,
            };
            for (queue, st) in queues.iter().zip(&sink_stats) {
                if queue.push(out.clone()).is_some() {
                    lock(st).queue_dropped += 1;
                }
            }
            if limits
                .frames
                .is_some_and(|n| counts.processed.load(Ordering::SeqCst) >= n)
            {
                stop.store(true, Ordering::SeqCst);
            }
        }
        stop.store(true, Ordering::SeqCst);
        source_ended = capture.join().unwrap_or(false);
        let left = mailbox.drain().len() as u64;
        counts.dropped.fetch_add(left, Ordering::SeqCst);
        for queue in &queues {
            queue.close();
        }
    });

    let stats = stats.into_inner().unwrap_or_else(PoisonError::into_inner);
    let elapsed_us = stats
        .first_capture_us
        .map(|first| stats.last_done_us.saturating_sub(first))
        .unwrap_or(0);
    let c = counts.snapshot();
    RunReport {
        adapter_switches: stages.switches().to_vec(),
        source: source_name,
        source_ended,
        label: label.to_string(),
        captured: c.captured,
        processed: c.processed,
        dropped: c.dropped,
        failed: counts.failed.load(Ordering::SeqCst),
        source_errors: counts.source_errors.load(Ordering::SeqCst),
        last_source_error: stats.last_source_error,
        last_failure: stats.last_failure,
        wall_s: epoch.elapsed().as_secs_f64(),
        fps: if elapsed_us > 0 && c.processed > 1 {
            (c.processed - 1) as f64 * 1e6 / elapsed_us as f64
        } else {
            0.0
        },
        stages: StageReport {
            wait: stats.wait.percentiles(),
            preprocess: stats.preprocess.percentiles(),
            inference: stats.inference.percentiles(),
            postprocess: stats.postprocess.percentiles(),
        },
        sinks: names
            .into_iter()
            .zip(sink_stats)
            .map(|(name, st)| {
                let st = st.into_inner().unwrap_or_else(PoisonError::into_inner);
                SinkReport {
                    name,
                    emitted: st.emitted,
                    queue_dropped: st.queue_dropped,
                    errors: st.errors,
                    last_error: st.last_error,
                    emit: st.emit.percentiles(),
                    end_to_end: st.end_to_end.percentiles(),
                    overhead: st.overhead.percentiles(),
                }
            })
            .collect(),
    }
}
