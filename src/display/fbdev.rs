//! The Linux framebuffer back end (`/dev/fb0`): the device's format is read once with the
//! `FBIOGET_VSCREENINFO` and `FBIOGET_FSCREENINFO` ioctls, and every frame is written row by
//! row with `pwrite` at `line_length` strides, starting at the visible area's panning offset.
//!
//! Supported formats are RGB565 and XRGB8888 ([`super::pixel`]); any other layout is an error
//! that names it. What is testable without a framebuffer is tested here: the kernel structs'
//! sizes and the format read from them. Opening and writing a real device needs one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::canvas::Canvas;
use super::pixel::{Channel, Layout, PixelFormat};
use super::sys::{ioctl, open_device};
use super::{DisplayError, Screen};

/// `FBIOGET_VSCREENINFO` from `linux/fb.h`.
const FBIOGET_VSCREENINFO: u32 = 0x4600;
/// `FBIOGET_FSCREENINFO` from `linux/fb.h`.
const FBIOGET_FSCREENINFO: u32 = 0x4602;

/// `struct fb_bitfield`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// `struct fb_var_screeninfo` (160 bytes on every architecture).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

/// `struct fb_fix_screeninfo` (80 bytes on 64-bit targets, 68 on 32-bit ones).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    kind: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

/// Geometry and format of a framebuffer, from its screen info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    width: u32,
    height: u32,
    format: PixelFormat,
    /// Bytes from one row to the next.
    line_length: u64,
    /// Byte offset of the visible area's top-left pixel.
    origin: u64,
}

impl Geometry {
    /// Checks the screen info and derives the geometry.
    fn from_info(
        path: &Path,
        var: &FbVarScreeninfo,
        fix: &FbFixScreeninfo,
    ) -> Result<Geometry, DisplayError> {
        let ch = |b: FbBitfield| Channel {
            offset: b.offset,
            length: b.length,
        };
        let layout = Layout {
            bits_per_pixel: var.bits_per_pixel,
            red: ch(var.red),
            green: ch(var.green),
            blue: ch(var.blue),
        };
        let format =
            PixelFormat::from_layout(&layout).ok_or_else(|| DisplayError::UnsupportedFormat {
                path: path.to_path_buf(),
                format: layout.to_string(),
            })?;
        let bpp = format.bytes_per_pixel() as u64;
        let line_length = u64::from(fix.line_length);
        let row_bytes = u64::from(var.xres) * bpp;
        if var.xres == 0 || var.yres == 0 || line_length < row_bytes {
            return Err(DisplayError::Device {
                path: path.to_path_buf(),
                reason: format!(
                    "inconsistent screen info: {}x{} pixels of {bpp} bytes, line length {}",
                    var.xres, var.yres, fix.line_length
                ),
            });
        }
        Ok(Geometry {
            width: var.xres,
            height: var.yres,
            format,
            line_length,
            origin: u64::from(var.yoffset) * line_length + u64::from(var.xoffset) * bpp,
        })
    }
}

/// An open framebuffer device.
#[derive(Debug)]
pub struct Fbdev {
    file: File,
    path: PathBuf,
    geometry: Geometry,
    /// One packed row, reused.
    row: Vec<u8>,
}

impl Fbdev {
    /// Opens the framebuffer at `path` for writing and reads its format.
    pub fn open(path: &Path) -> Result<Fbdev, DisplayError> {
        let file = open_device(path)?;
        let mut var = FbVarScreeninfo::default();
        ioctl(
            &file,
            path,
            "FBIOGET_VSCREENINFO",
            FBIOGET_VSCREENINFO,
            &mut var,
        )?;
        let mut fix = FbFixScreeninfo::default();
        ioctl(
            &file,
            path,
            "FBIOGET_FSCREENINFO",
            FBIOGET_FSCREENINFO,
            &mut fix,
        )?;
        let geometry = Geometry::from_info(path, &var, &fix)?;
        Ok(Fbdev {
            file,
            path: path.to_path_buf(),
            row: vec![0; geometry.width as usize * geometry.format.bytes_per_pixel()],
            geometry,
        })
    }
}

impl Screen for Fbdev {
    fn size(&self) -> Option<(u32, u32)> {
        Some((self.geometry.width, self.geometry.height))
    }

    /// Writes the canvas at the top left of the visible area, clipped to it.
    fn show(&mut self, canvas: &Canvas, _seq: u64) -> Result<(), DisplayError> {
        let g = self.geometry;
        let cols = canvas.width().min(g.width) as usize;
        let bytes = cols * g.format.bytes_per_pixel();
        for y in 0..canvas.height().min(g.height) {
            let Some(rgb) = canvas.row(y) else { break };
            g.format.pack_row(&rgb[..cols * 3], &mut self.row[..bytes]);
            let offset = g.origin + u64::from(y) * g.line_length;
            self.file
                .write_all_at(&self.row[..bytes], offset)
                .map_err(|source| DisplayError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<FbBitfield>(), 12);
        assert_eq!(std::mem::size_of::<FbVarScreeninfo>(), 160);
        let fix = if cfg!(target_pointer_width = "64") {
            80
        } else {
            68
        };
        assert_eq!(std::mem::size_of::<FbFixScreeninfo>(), fix);
        assert_eq!(std::mem::offset_of!(FbVarScreeninfo, red), 32);
        assert_eq!(std::mem::offset_of!(FbVarScreeninfo, nonstd), 80);
        let line_length = if cfg!(target_pointer_width = "64") {
            48
        } else {
            44
        };
        assert_eq!(
            std::mem::offset_of!(FbFixScreeninfo, line_length),
            line_length
        );
    }

    fn info(bpp: u32, rgb: [(u32, u32); 3]) -> FbVarScreeninfo {
        let bf = |(offset, length)| FbBitfield {
            offset,
            length,
            msb_right: 0,
        };
        FbVarScreeninfo {
            xres: 800,
            yres: 480,
            xoffset: 0,
            yoffset: 480,
            bits_per_pixel: bpp,
            red: bf(rgb[0]),
            green: bf(rgb[1]),
            blue: bf(rgb[2]),
            ..FbVarScreeninfo::default()
        }
    }

    fn fix(line_length: u32) -> FbFixScreeninfo {
        FbFixScreeninfo {
            line_length,
            ..FbFixScreeninfo::default()
        }
    }

    #[test]
    fn reads_format_stride_and_panning() {
        let path = Path::new("/dev/fb0");
        let var = info(16, [(11, 5), (5, 6), (0, 5)]);
        let g = Geometry::from_info(path, &var, &fix(1664)).unwrap();
        assert_eq!(g.format, PixelFormat::Rgb565);
        assert_eq!((g.width, g.height, g.line_length), (800, 480, 1664));
        assert_eq!(
            g.origin,
            480 * 1664,
            "second page of a double-buffered screen"
        );

        let var = info(32, [(16, 8), (8, 8), (0, 8)]);
        let g = Geometry::from_info(path, &var, &fix(3200)).unwrap();
        assert_eq!(g.format, PixelFormat::Xrgb8888);
    }

    #[test]
    fn unsupported_format_is_named() {
        let var = info(24, [(16, 8), (8, 8), (0, 8)]);
        let err = Geometry::from_info(Path::new("/dev/fb1"), &var, &fix(2400)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/fb1: unsupported pixel format (24 bpp, red 16:8, green 8:8, blue 0:8); \
             supported: RGB565, XRGB8888"
        );
    }

    #[test]
    fn short_lines_are_rejected() {
        let var = info(32, [(16, 8), (8, 8), (0, 8)]);
        let err = Geometry::from_info(Path::new("/dev/fb0"), &var, &fix(3196)).unwrap_err();
        assert!(matches!(err, DisplayError::Device { .. }), "{err}");
    }

    #[test]
    fn missing_device_is_an_error_naming_it() {
        let err = Fbdev::open(Path::new("/nonexistent/fb9")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/fb9: "), "{err}");
    }
}
