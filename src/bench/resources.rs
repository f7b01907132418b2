//! What a run costs the machine besides wall time: CPU time of the whole process (every
//! thread, tract's pools included) and its peak resident set.
//!
//! The peak is Linux's high-water mark (`VmHWM`), which the bench resets before each run
//! (`/proc/self/clear_refs`), so each run reports its own peak; where that reset is refused the
//! figure is the process's peak so far, never lower than the run's.

use std::time::Duration;

fn rusage() -> libc::rusage {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    }
}

/// User plus system CPU time of this process so far.
pub fn cpu_time() -> Duration {
    let usage = rusage();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Resets the peak resident set to the current one; false where the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set in MiB: `VmHWM`, else `getrusage`'s maximum.
pub fn peak_rss_mib() -> f64 {
    let hwm_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        });
    hwm_kib.unwrap_or_else(|| rusage().ru_maxrss as f64) / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_and_the_peak_follows_an_allocation() {
        let before = cpu_time();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(cpu_time() > before, "{x}");

        reset_peak_rss();
        let base = peak_rss_mib();
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let peak = peak_rss_mib();
        assert!(peak >= base + 60.0, "peak {peak} MiB, base {base} MiB");
    }
}
