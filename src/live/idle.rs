//! Holding the CPUs' idle-state exit latency down while a live loop runs (Linux PM QoS).
//!
//! Between frames the inference thread sleeps, and an idle CPU drops into a state it takes time
//! to leave; in a virtual machine an idle virtual CPU is even handed back to the host. The
//! frame after that pays the wake-up. Writing a latency bound to [`DEVICE`] asks the kernel to
//! use only idle states that wake within it, for as long as the file stays open — the same
//! request real-time latency tools make while they measure. It costs power, so a profile asks
//! for it (`[run] idle_latency_us`); it needs write access to the device (root, or a udev rule).
//!
//! Measured on the demo profile (2 vCPUs, three interleaved pairs of 300-frame runs, the table
//! in docs/performance.md): with the bound at 0 µs, end-to-end p50 4.30–4.97 ms and p99
//! 6.89–8.02 ms; without it, 4.97–5.42 and 9.38–12.64.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// The kernel's CPU latency request file.
pub const DEVICE: &str = "/dev/cpu_dma_latency";

/// A held latency request; dropping it (closing the file) ends the request.
#[derive(Debug)]
pub struct IdleLatency {
    _file: File,
}

impl IdleLatency {
    /// Asks that no CPU take longer than `us` microseconds to leave an idle state.
    pub fn hold(us: u32) -> io::Result<IdleLatency> {
        hold_at(Path::new(DEVICE), us)
    }
}

/// Writes the request as the kernel reads it: one native-endian 32-bit integer.
fn hold_at(path: &Path, us: u32) -> io::Result<IdleLatency> {
    let value = i32::try_from(us)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "latency above i32::MAX µs"))?;
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(&value.to_ne_bytes())?;
    Ok(IdleLatency { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_one_native_endian_integer() {
        let path = std::env::temp_dir().join(format!("edgeseg-idle-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let held = hold_at(&path, 20).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), 20i32.to_ne_bytes());
        drop(held);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_missing_device_and_an_oversized_bound_are_errors() {
        let missing = Path::new("/nonexistent/cpu_dma_latency");
        assert_eq!(
            hold_at(missing, 0).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let err = hold_at(missing, u32::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
