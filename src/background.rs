//! Threads whose work is off a frame's latency path: PNG display snapshots, region-of-interest
//! re-detection. They run in Linux's `SCHED_IDLE` class, so they only take a CPU no other
//! thread wants, and a thread that wakes with a frame to hand on preempts them at once.
//!
//! Lowering the nice value is not enough for that: the kernel's fair scheduler (EEVDF) lets a
//! running thread finish its slice (about 1.5 ms with 2 CPUs) before a woken thread of any nice
//! value runs, but preempts a `SCHED_IDLE` thread on every wake-up. Measured on the demo
//! profile (2 vCPUs), the serial sink waited 0.8–2.6 ms for a CPU on every frame that also made
//! a display snapshot; with the snapshot thread in `SCHED_IDLE`, 0.03–0.3 ms on most of them.
//!
//! Any thread may move itself to `SCHED_IDLE`; no privilege is needed.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a failure to lower a thread has been logged.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Moves the calling thread to the `SCHED_IDLE` scheduling class; when that fails, leaves the
/// thread as it is, since its work is still correct at normal priority, and logs why the first
/// time in the process (re-detection starts a thread every second). `what` names the thread's
/// work for the log.
pub fn lower(what: &str) {
    if let Err(e) = lower_current_thread() {
        if !WARNED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "{what}: cannot move to the idle scheduling class ({e}); background work runs \
                 at normal priority and may delay frames"
            );
        }
    }
}

fn lower_current_thread() -> io::Result<()> {
    // Priority 0, the only one `SCHED_IDLE` takes. musl's struct has more fields than glibc's.
    // SAFETY: `sched_param` is plain integers, for which all zeros is a valid value.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // The system call, not libc's wrapper: musl's wrapper (the static build) always fails
    // with ENOSYS. SAFETY: pid 0 names the calling thread, and `param` is a valid,
    // initialised struct that outlives the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_IDLE,
            &param as *const libc::sched_param,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calling_thread_moves_to_sched_idle_and_others_stay() {
        let policy = std::thread::spawn(|| {
            lower_current_thread().unwrap();
            // SAFETY: pid 0 names the calling thread.
            unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::c_long::from(libc::SCHED_IDLE));
        // SAFETY: pid 0 names the calling thread.
        let here = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
        assert_eq!(here, libc::c_long::from(libc::SCHED_OTHER));
    }
}
