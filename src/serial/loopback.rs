//! A cable-free serial link for demos and checks: a pseudo-terminal pair whose terminal side
//! stands in for a UART (reached through a symbolic link at the configured port path, so the
//! serial sink opens it like any device) and whose other side is decoded by a built-in
//! receiver thread running [`listen`], which writes its lines to a log file.
//!
//! The run thus checks its own wire format end to end: the log ends with the receiver's
//! summary (messages, CRC rejects, lost sequence numbers).

use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::{listen, ListenSummary};

/// A running loopback link. Dropping it without [`Loopback::finish`] stops the receiver too.
pub struct Loopback {
    link: PathBuf,
    stop: Arc<AtomicBool>,
    receiver: Option<JoinHandle<io::Result<ListenSummary>>>,
    /// Keeps the terminal side open, so the pair stays up while the sink reconnects.
    _terminal: OwnedFd,
}

/// Reads the controller side, waiting at most 100 ms per read. Input ends on EIO (every
/// terminal-side descriptor closed) or once `stop` is set and nothing more arrived within a
/// read's wait, so bytes in flight when the run ends are still decoded.
struct ControllerReader {
    file: File,
    stop: Arc<AtomicBool>,
}

impl Read for ControllerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut poll = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut poll, 1, 100) } {
            0 if self.stop.load(Ordering::SeqCst) => return Ok(0),
            0 => return Err(io::ErrorKind::TimedOut.into()),
            n if n < 0 => return Err(io::Error::last_os_error()),
            _ => {}
        }
        match self.file.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Loopback {
    /// Opens a pseudo-terminal pair, points `link` at its terminal side (replacing a link
    /// already there, refusing to replace anything else) and starts the receiver, which writes
    /// to `log`.
    pub fn start(link: &Path, log: &Path) -> io::Result<Loopback> {
        let (mut controller, mut terminal) = (-1, -1);
        let null = std::ptr::null_mut();
        // SAFETY: openpty writes two descriptors; the optional arguments may be null.
        if unsafe { libc::openpty(&mut controller, &mut terminal, null, null as _, null as _) } != 0
        {
            return Err(os_error("openpty"));
        }
        // SAFETY: both descriptors were just opened and are owned here alone.
        let (controller, terminal) = unsafe {
            (
                File::from_raw_fd(controller),
                OwnedFd::from_raw_fd(terminal),
            )
        };
        let mut name = [0 as libc::c_char; 256];
        // SAFETY: a valid descriptor and a buffer of the stated length.
        if unsafe { libc::ttyname_r(terminal.as_raw_fd(), name.as_mut_ptr(), name.len()) } != 0 {
            return Err(os_error("ttyname"));
        }
        // SAFETY: ttyname_r wrote a NUL-terminated string into `name`.
        let tty = PathBuf::from(
            unsafe { CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        );
        for path in [link, log] {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)?;
            }
        }
        match fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(link)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a link; the loopback will not replace it",
                        link.display()
                    ),
                ))
            }
            Err(_) => {}
        }
        symlink(&tty, link)?;
        let out = BufWriter::new(File::create(log)?);
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let reader = ControllerReader {
                file: controller,
                stop: Arc::clone(&stop),
            };
            thread::Builder::new()
                .name("serial-loopback".into())
                .spawn(move || listen(reader, out, &AtomicBool::new(false)))?
        };
        log::info!(
            "serial loopback: {} → {}, decoded into {}",
            link.display(),
            tty.display(),
            log.display()
        );
        Ok(Loopback {
            link: link.to_path_buf(),
            stop,
            receiver: Some(receiver),
            _terminal: terminal,
        })
    }

    /// Stops the receiver once it has read what is in flight, removes the link and returns the
    /// receiver's summary.
    pub fn finish(mut self) -> io::Result<ListenSummary> {
        self.shut()
    }

    fn shut(&mut self) -> io::Result<ListenSummary> {
        // The receiver drains what is queued first: only an empty 100 ms wait ends its input.
        self.stop.store(true, Ordering::SeqCst);
        let _ = fs::remove_file(&self.link);
        match self.receiver.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| io::Error::other("the loopback receiver panicked"))?,
            None => Ok(ListenSummary::default()),
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if self.receiver.is_some() {
            let _ = self.shut();
        }
    }
}
