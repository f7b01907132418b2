//! A second thread for two-way splits that stays awake between them: [`split`] runs one half of
//! a job on the calling thread and hands the other to a helper thread that spins for a while
//! after each job instead of going to sleep.
//!
//! A graph on 2 threads makes a split per operator of ours, tens per run, a few hundred µs
//! apart. Waking a sleeping thread on an idle CPU costs tens of µs each time in a virtual
//! machine (the host must schedule that CPU again), and tract's pool lets its workers sleep
//! between operators; onnxruntime's pool spins for the same reason. With the helper, the
//! U-Nets at 2 threads went from 3.8–4.2 to 2.5–2.9 ms on a 2-CPU VM. The helper spins for 2 ms (`SPIN`)
//! after its last job (yielding, so that runnable threads go first), then parks until the next.
//!
//! There is one helper per process. A split that finds it busy (another graph on another thread)
//! runs both halves on the calling thread.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long the helper spins after a job before it parks.
const SPIN: Duration = Duration::from_millis(2);

const IDLE: u8 = 0;
const CLAIMED: u8 = 1;
const POSTED: u8 = 2;
const DONE: u8 = 3;
const FAILED: u8 = 4;

/// A job's half for the helper: the caller's closure, which it keeps alive until the helper has
/// finished.
type Half = *const (dyn Fn() + Sync);

struct Helper {
    state: AtomicU8,
    job: UnsafeCell<Option<Half>>,
    thread: Thread,
}

// SAFETY: `job` is written only by the caller that claimed the helper (IDLE → CLAIMED) before
// it posts, and read only by the helper after it sees POSTED; the caller waits for DONE or FAILED
// before it returns, so the closure outlives every use.
unsafe impl Sync for Helper {}
unsafe impl Send for Helper {}

static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();

/// The helper, started on first use; None if its thread could not be started.
fn helper() -> Option<&'static Helper> {
    *HELPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Helper>();
        let spawned = thread::Builder::new()
            .name("edgeseg-split".into())
            .spawn(move || {
                let helper: &'static Helper = Box::leak(Box::new(Helper {
                    state: AtomicU8::new(IDLE),
                    job: UnsafeCell::new(None),
                    thread: thread::current(),
                }));
                if tx.send(helper).is_ok() {
                    serve(helper);
                }
            });
        match spawned {
            Ok(_) => rx.recv().ok(),
            Err(e) => {
                log::warn!("no helper thread for two-way splits: {e}");
                None
            }
        }
    })
}

/// The helper's loop: runs each posted half, spinning for [`SPIN`] after it before parking.
fn serve(helper: &Helper) {
    let mut last = Instant::now();
    loop {
        if helper.state.load(Ordering::Acquire) == POSTED {
            // SAFETY: see `Helper`; the caller keeps the closure alive until DONE or FAILED.
            let half = unsafe { (*helper.job.get()).take() };
            let ok = half.is_some_and(|half| {
                catch_unwind(AssertUnwindSafe(|| unsafe { (*half)() })).is_ok()
            });
            helper
                .state
                .store(if ok { DONE } else { FAILED }, Ordering::Release);
            last = Instant::now();
        } else if last.elapsed() < SPIN {
            thread::yield_now();
        } else {
            thread::park();
            last = Instant::now();
        }
    }
}

/// Runs `first` on this thread and `second` on the helper, and returns when both have run;
/// both on this thread, one after the other, when the helper is busy or missing.
///
/// # Panics
/// If either half panics (after both have finished).
pub fn split(first: impl Fn() + Sync, second: impl Fn() + Sync) {
    let claimed = helper().filter(|h| {
        h.state
            .compare_exchange(IDLE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    });
    let Some(helper) = claimed else {
        first();
        second();
        return;
    };
    let half: &(dyn Fn() + Sync) = &second;
    // SAFETY: the lifetime is erased for the helper, which this function waits for below.
    let half: Half = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Half>(half) };
    // SAFETY: this thread claimed the helper, so nothing else touches `job` until POSTED.
    unsafe { *helper.job.get() = Some(half) };
    helper.state.store(POSTED, Ordering::Release);
    helper.thread.unpark();
    let mine = catch_unwind(AssertUnwindSafe(&first));
    let theirs = loop {
        match helper.state.load(Ordering::Acquire) {
            DONE => break true,
            FAILED => break false,
            _ => std::hint::spin_loop(),
        }
    };
    helper.state.store(IDLE, Ordering::Release);
    if let Err(panic) = mine {
        std::panic::resume_unwind(panic);
    }
    assert!(theirs, "the helper's half of a split panicked");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn both_halves_run_before_split_returns() {
        for _ in 0..1000 {
            let (a, b) = (AtomicUsize::new(0), AtomicUsize::new(0));
            split(
                || {
                    a.fetch_add(1, Ordering::Relaxed);
                },
                || {
                    b.fetch_add(2, Ordering::Relaxed);
                },
            );
            assert_eq!((a.into_inner(), b.into_inner()), (1, 2));
        }
    }

    #[test]
    fn splits_from_many_threads_at_once_all_run() {
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        split(
                            || {
                                total.fetch_add(1, Ordering::Relaxed);
                            },
                            || {
                                total.fetch_add(1, Ordering::Relaxed);
                            },
                        );
                    }
                });
            }
        });
        assert_eq!(total.into_inner(), 4 * 500 * 2);
    }
}
