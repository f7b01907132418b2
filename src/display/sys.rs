//! What both device back ends share: opening the device node read-write, and the one `ioctl`
//! call they make, with `EINTR`/`EAGAIN` retried and failures turned into
//! [`DisplayError::Ioctl`] naming the device and the request.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::DisplayError;

/// Opens the device node at `path` for reading and writing.
pub(crate) fn open_device(path: &Path) -> Result<File, DisplayError> {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| DisplayError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Runs `ioctl(file, request, arg)`. `T` must be the `#[repr(C)]` struct the request's
/// kernel definition names (the request number encodes its size for the DRM requests; the
/// framebuffer ones are checked by the struct size tests in `fbdev`).
pub(crate) fn ioctl<T>(
    file: &File,
    path: &Path,
    name: &'static str,
    request: u32,
    arg: &mut T,
) -> Result<(), DisplayError> {
    loop {
        // SAFETY: `arg` is a live, exclusively borrowed `#[repr(C)]` value of the layout the
        // request expects, so the kernel reads and writes only memory we own; the descriptor
        // is open for the duration of the call. The request number is passed through as the
        // C type of this libc (`c_ulong` on glibc, `c_int` on musl), bit for bit.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg as *mut T) };
        if rc != -1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => {
                return Err(DisplayError::Ioctl {
                    path: path.to_path_buf(),
                    request: name,
                    source: err,
                })
            }
        }
    }
}
