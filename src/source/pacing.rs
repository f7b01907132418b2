//! Frame pacing shared by every paced source: sleep until the next frame is due, in short
//! slices that check the stop flag, and never burst to catch up after a late frame.
//!
//! The first frame is due at once. Each later frame is due one interval after the previous
//! due time, which keeps the cadence free of drift. A frame that comes due more than one full
//! interval late (a slow decode, a stalled reader, a debugger) re-anchors the schedule at the
//! present instead: the next frame is due one interval from now, so a stall is never followed
//! by a burst of frames.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest single sleep while waiting: a set stop flag is seen within this time.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Highest frame rate a source accepts (a guard against typos such as `fps = 3000`).
pub const MAX_FPS: f64 = 1000.0;

/// Sleeps until `deadline` in slices of at most [`STOP_CHECK_INTERVAL`].
///
/// Returns `true` when the deadline was reached, `false` as soon as `stop` is seen set (also
/// when it is set on entry).
pub fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(STOP_CHECK_INTERVAL));
    }
}

/// The time between frames at `fps` frames per second, or `None` for a rate that is not a
/// finite number in (0, [`MAX_FPS`]].
pub fn interval_from_fps(fps: f64) -> Option<Duration> {
    if fps.is_finite() && fps > 0.0 && fps <= MAX_FPS {
        Some(Duration::from_secs_f64(1.0 / fps))
    } else {
        None
    }
}

/// Paces frames at a fixed interval, or not at all.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Option<Duration>,
    next_due: Option<Instant>,
}

impl Pacer {
    /// A pacer releasing one frame per `interval`; `None` releases frames as fast as asked.
    pub fn new(interval: Option<Duration>) -> Pacer {
        Pacer {
            interval,
            next_due: None,
        }
    }

    /// The time between frames, `None` when unpaced.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// Waits until the next frame is due. Returns `true` when it is, `false` when `stop` was
    /// set before (an unpaced pacer also returns `false` at once when `stop` is set).
    pub fn wait(&mut self, stop: &AtomicBool) -> bool {
        let Some(interval) = self.interval else {
            return !stop.load(Ordering::Relaxed);
        };
        let due = self.next_due.unwrap_or_else(Instant::now);
        if !sleep_until(due, stop) {
            return false;
        }
        let now = Instant::now();
        self.next_due = Some(if now.duration_since(due) > interval {
            now + interval
        } else {
            due + interval
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_from_fps_rejects_nonsense() {
        assert_eq!(interval_from_fps(50.0), Some(Duration::from_millis(20)));
        assert_eq!(interval_from_fps(0.0), None);
        assert_eq!(interval_from_fps(-5.0), None);
        assert_eq!(interval_from_fps(f64::NAN), None);
        assert_eq!(interval_from_fps(f64::INFINITY), None);
        assert_eq!(interval_from_fps(MAX_FPS + 1.0), None);
    }

    #[test]
    fn first_frame_is_due_at_once_and_later_frames_keep_the_cadence() {
        let stop = AtomicBool::new(false);
        let mut pacer = Pacer::new(Some(Duration::from_millis(30)));
        let start = Instant::now();
        assert!(pacer.wait(&stop));
        assert!(start.elapsed() < Duration::from_millis(25));
        for _ in 0..4 {
            assert!(pacer.wait(&stop));
        }
        // four intervals after the first frame
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    fn a_late_frame_reanchors_instead_of_bursting() {
        let stop = AtomicBool::new(false);
        let mut pacer = Pacer::new(Some(Duration::from_millis(20)));
        assert!(pacer.wait(&stop));
        std::thread::sleep(Duration::from_millis(100)); // five intervals late
        assert!(pacer.wait(&stop)); // due long ago: at once
        let after_late = Instant::now();
        assert!(pacer.wait(&stop));
        // the schedule restarted from the late frame: a full interval, not a burst
        assert!(after_late.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn stop_ends_a_long_wait_promptly() {
        let stop = AtomicBool::new(false);
        let mut pacer = Pacer::new(Some(Duration::from_secs(10)));
        assert!(pacer.wait(&stop));
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                stop.store(true, Ordering::Relaxed);
            });
            assert!(!pacer.wait(&stop));
        });
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn unpaced_never_waits_but_honours_stop() {
        let stop = AtomicBool::new(false);
        let mut pacer = Pacer::new(None);
        let start = Instant::now();
        for _ in 0..1000 {
            assert!(pacer.wait(&stop));
        }
        assert!(start.elapsed() < Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        assert!(!pacer.wait(&stop));
    }
}
