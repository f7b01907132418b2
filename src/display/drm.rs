//! The DRM/KMS back end (`/dev/dri/card0`, the display path of Jetson boards and of the
//! Raspberry Pi's KMS driver), with raw ioctls: the structs of `drm_mode.h` are written out
//! below.
//!
//! Opening finds the first connected connector that has modes, takes its preferred mode (or
//! its first), picks a CRTC its encoder can drive, creates a 32-bit XRGB8888 dumb buffer of
//! the mode's size, maps it, adds it as a framebuffer and sets the CRTC to scan it out. Each
//! frame is then packed into the mapped buffer row by row at its pitch (single-buffered: a
//! frame may tear), followed by a `DIRTYFB` for drivers that need one. Dropping the screen
//! puts the CRTC's previous configuration back (the console, usually) and frees the buffer.
//!
//! The process must be allowed to set modes: no other DRM master (a desktop session) may be
//! running, and the user needs access to the device (usually the `video` group).
//!
//! Without a display only the hardware-independent parts can be tested: the structs' sizes
//! and the request numbers against the kernel ABI, mode choice and CRTC choice.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use super::canvas::Canvas;
use super::pixel::PixelFormat;
use super::sys::{ioctl, open_device};
use super::{DisplayError, Screen};

/// `DRM_IOWR(nr, size)` with the `'d'` ioctl type (asm-generic encoding, as on x86 and arm).
const fn iowr(nr: u32, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | ((b'd' as u32) << 8) | nr
}

const GETRESOURCES: u32 = iowr(0xa0, std::mem::size_of::<CardRes>());
const GETCRTC: u32 = iowr(0xa1, std::mem::size_of::<Crtc>());
const SETCRTC: u32 = iowr(0xa2, std::mem::size_of::<Crtc>());
const GETENCODER: u32 = iowr(0xa6, std::mem::size_of::<GetEncoder>());
const GETCONNECTOR: u32 = iowr(0xa7, std::mem::size_of::<GetConnector>());
const ADDFB: u32 = iowr(0xae, std::mem::size_of::<FbCmd>());
const RMFB: u32 = iowr(0xaf, std::mem::size_of::<u32>());
const DIRTYFB: u32 = iowr(0xb1, std::mem::size_of::<FbDirtyCmd>());
const CREATE_DUMB: u32 = iowr(0xb2, std::mem::size_of::<CreateDumb>());
const MAP_DUMB: u32 = iowr(0xb3, std::mem::size_of::<MapDumb>());
const DESTROY_DUMB: u32 = iowr(0xb4, std::mem::size_of::<DestroyDumb>());

/// `DRM_MODE_CONNECTED`.
const CONNECTED: u32 = 1;
/// `DRM_MODE_TYPE_PREFERRED`.
const MODE_TYPE_PREFERRED: u32 = 1 << 3;
/// Tries at reading a list whose length changed between the two calls (hot plugging).
const LIST_TRIES: usize = 4;

/// `struct drm_mode_card_res`.
#[repr(C)]
#[derive(Debug, Default)]
struct CardRes {
    fb_id_ptr: u64,
    crtc_id_ptr: u64,
    connector_id_ptr: u64,
    encoder_id_ptr: u64,
    count_fbs: u32,
    count_crtcs: u32,
    count_connectors: u32,
    count_encoders: u32,
    min_width: u32,
    max_width: u32,
    min_height: u32,
    max_height: u32,
}

/// `struct drm_mode_modeinfo`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ModeInfo {
    clock: u32,
    hdisplay: u16,
    hsync_start: u16,
    hsync_end: u16,
    htotal: u16,
    hskew: u16,
    vdisplay: u16,
    vsync_start: u16,
    vsync_end: u16,
    vtotal: u16,
    vscan: u16,
    vrefresh: u32,
    flags: u32,
    kind: u32,
    name: [u8; 32],
}

/// `struct drm_mode_crtc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Crtc {
    set_connectors_ptr: u64,
    count_connectors: u32,
    crtc_id: u32,
    fb_id: u32,
    x: u32,
    y: u32,
    gamma_size: u32,
    mode_valid: u32,
    mode: ModeInfo,
}

/// `struct drm_mode_get_encoder`.
#[repr(C)]
#[derive(Debug, Default)]
struct GetEncoder {
    encoder_id: u32,
    encoder_type: u32,
    crtc_id: u32,
    possible_crtcs: u32,
    possible_clones: u32,
}

/// `struct drm_mode_get_connector`.
#[repr(C)]
#[derive(Debug, Default)]
struct GetConnector {
    encoders_ptr: u64,
    modes_ptr: u64,
    props_ptr: u64,
    prop_values_ptr: u64,
    count_modes: u32,
    count_props: u32,
    count_encoders: u32,
    encoder_id: u32,
    connector_id: u32,
    connector_type: u32,
    connector_type_id: u32,
    connection: u32,
    mm_width: u32,
    mm_height: u32,
    subpixel: u32,
    pad: u32,
}

/// `struct drm_mode_fb_cmd`.
#[repr(C)]
#[derive(Debug, Default)]
struct FbCmd {
    fb_id: u32,
    width: u32,
    height: u32,
    pitch: u32,
    bpp: u32,
    depth: u32,
    handle: u32,
}

/// `struct drm_mode_fb_dirty_cmd`.
#[repr(C)]
#[derive(Debug, Default)]
struct FbDirtyCmd {
    fb_id: u32,
    flags: u32,
    color: u32,
    num_clips: u32,
    clips_ptr: u64,
}

/// `struct drm_mode_create_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
struct CreateDumb {
    height: u32,
    width: u32,
    bpp: u32,
    flags: u32,
    handle: u32,
    pitch: u32,
    size: u64,
}

/// `struct drm_mode_map_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
struct MapDumb {
    handle: u32,
    pad: u32,
    offset: u64,
}

/// `struct drm_mode_destroy_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
struct DestroyDumb {
    handle: u32,
}

/// A connected connector, its chosen mode and the CRTC that will drive it.
#[derive(Debug, Clone, Copy)]
struct Route {
    connector: u32,
    crtc: u32,
    mode: ModeInfo,
}

/// The preferred mode, else the first; `None` for an empty list.
fn pick_mode(modes: &[ModeInfo]) -> Option<ModeInfo> {
    modes
        .iter()
        .find(|m| m.kind & MODE_TYPE_PREFERRED != 0)
        .or_else(|| modes.first())
        .copied()
}

/// The first CRTC whose bit is set in an encoder's `possible_crtcs` (bit i = `crtcs[i]`).
fn pick_crtc(possible_crtcs: u32, crtcs: &[u32]) -> Option<u32> {
    crtcs
        .iter()
        .take(32)
        .enumerate()
        .find(|(i, _)| possible_crtcs & (1 << i) != 0)
        .map(|(_, &id)| id)
}

/// The card's CRTC and connector ids (bit i of an encoder's `possible_crtcs` is `crtcs[i]`).
struct Resources {
    crtcs: Vec<u32>,
    connectors: Vec<u32>,
}

/// An open card with no buffers yet: the queries that find a [`Route`].
struct Card<'a> {
    file: &'a File,
    path: &'a Path,
}

impl Card<'_> {
    fn ioctl<T>(&self, name: &'static str, request: u32, arg: &mut T) -> Result<(), DisplayError> {
        ioctl(self.file, self.path, name, request, arg)
    }

    /// CRTC and connector ids.
    fn resources(&self) -> Result<Resources, DisplayError> {
        for _ in 0..LIST_TRIES {
            let mut res = CardRes::default();
            self.ioctl("DRM_IOCTL_MODE_GETRESOURCES", GETRESOURCES, &mut res)?;
            let mut crtcs = vec![0u32; res.count_crtcs as usize];
            let mut connectors = vec![0u32; res.count_connectors as usize];
            let mut again = CardRes {
                crtc_id_ptr: crtcs.as_mut_ptr() as u64,
                connector_id_ptr: connectors.as_mut_ptr() as u64,
                count_crtcs: res.count_crtcs,
                count_connectors: res.count_connectors,
                ..CardRes::default()
            };
            self.ioctl("DRM_IOCTL_MODE_GETRESOURCES", GETRESOURCES, &mut again)?;
            if (again.count_crtcs, again.count_connectors)
                == (res.count_crtcs, res.count_connectors)
            {
                return Ok(Resources { crtcs, connectors });
            }
        }
        Err(self.unstable("resources"))
    }

    /// A connector's state, modes and encoder ids.
    fn connector(&self, id: u32) -> Result<(GetConnector, Vec<ModeInfo>, Vec<u32>), DisplayError> {
        for _ in 0..LIST_TRIES {
            // A first call with no room for modes also makes the driver probe the output.
            let mut probe = GetConnector {
                connector_id: id,
                ..GetConnector::default()
            };
            self.ioctl("DRM_IOCTL_MODE_GETCONNECTOR", GETCONNECTOR, &mut probe)?;
            let mut modes = vec![ModeInfo::default(); probe.count_modes as usize];
            let mut encoders = vec![0u32; probe.count_encoders as usize];
            let mut full = GetConnector {
                connector_id: id,
                modes_ptr: modes.as_mut_ptr() as u64,
                count_modes: probe.count_modes,
                encoders_ptr: encoders.as_mut_ptr() as u64,
                count_encoders: probe.count_encoders,
                ..GetConnector::default()
            };
            self.ioctl("DRM_IOCTL_MODE_GETCONNECTOR", GETCONNECTOR, &mut full)?;
            if (full.count_modes, full.count_encoders) == (probe.count_modes, probe.count_encoders)
            {
                return Ok((full, modes, encoders));
            }
        }
        Err(self.unstable("connector modes"))
    }

    fn encoder(&self, id: u32) -> Result<GetEncoder, DisplayError> {
        let mut enc = GetEncoder {
            encoder_id: id,
            ..GetEncoder::default()
        };
        self.ioctl("DRM_IOCTL_MODE_GETENCODER", GETENCODER, &mut enc)?;
        Ok(enc)
    }

    fn unstable(&self, what: &str) -> DisplayError {
        DisplayError::Device {
            path: self.path.to_path_buf(),
            reason: format!("the {what} kept changing while being read"),
        }
    }

    /// The first connected connector with a mode, and a CRTC for it: the one its current
    /// encoder drives, else the first one any of its encoders can drive.
    fn route(&self) -> Result<Route, DisplayError> {
        let Resources { crtcs, connectors } = self.resources()?;
        let mut crtcless = None;
        for &id in &connectors {
            let (conn, modes, encoders) = self.connector(id)?;
            if conn.connection != CONNECTED {
                continue;
            }
            let Some(mode) = pick_mode(&modes) else {
                continue;
            };
            if conn.encoder_id != 0 {
                let crtc = self.encoder(conn.encoder_id)?.crtc_id;
                if crtc != 0 {
                    return Ok(Route {
                        connector: id,
                        crtc,
                        mode,
                    });
                }
            }
            for &enc in &encoders {
                if let Some(crtc) = pick_crtc(self.encoder(enc)?.possible_crtcs, &crtcs) {
                    return Ok(Route {
                        connector: id,
                        crtc,
                        mode,
                    });
                }
            }
            crtcless.get_or_insert(id);
        }
        Err(match crtcless {
            Some(connector) => DisplayError::NoCrtc {
                path: self.path.to_path_buf(),
                connector,
            },
            None => DisplayError::NoConnector {
                path: self.path.to_path_buf(),
            },
        })
    }
}

/// A dumb buffer handle, destroyed on drop.
struct DumbBuffer {
    fd: RawFd,
    handle: u32,
}

impl Drop for DumbBuffer {
    fn drop(&mut self) {
        let mut arg = DestroyDumb {
            handle: self.handle,
        };
        // SAFETY: `arg` is the struct DESTROY_DUMB expects; the descriptor outlives this value
        // (the screen's file is its last field). A failure only leaks the buffer until close.
        unsafe { libc::ioctl(self.fd, DESTROY_DUMB as _, &mut arg as *mut DestroyDumb) };
    }
}

/// A framebuffer object, removed on drop.
struct FramebufferId {
    fd: RawFd,
    id: u32,
}

impl Drop for FramebufferId {
    fn drop(&mut self) {
        let mut id = self.id;
        // SAFETY: RMFB takes a pointer to the u32 id; the descriptor outlives this value.
        unsafe { libc::ioctl(self.fd, RMFB as _, &mut id as *mut u32) };
    }
}

/// A shared, writable memory mapping of a dumb buffer, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by one value and only reached through `&mut self`, so moving it
// to another thread is sound, like moving a `Vec<u8>`.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(file: &File, path: &Path, len: usize, offset: u64) -> Result<Mapping, DisplayError> {
        let offset = libc::off_t::try_from(offset).map_err(|_| DisplayError::Device {
            path: path.to_path_buf(),
            reason: format!("dumb buffer map offset {offset:#x} is out of range"),
        })?;
        // SAFETY: a fresh shared mapping of `len` bytes of the buffer the kernel told us to map
        // at `offset`; no Rust memory is aliased and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DisplayError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| DisplayError::Device {
            path: path.to_path_buf(),
            reason: "the dumb buffer was mapped at address 0".to_string(),
        })?;
        Ok(Mapping { ptr, len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable and writable bytes for as long as
        // `self` exists, and `&mut self` makes this the only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `new` mapped; no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A DRM device showing one dumb buffer on one connector.
pub struct Drm {
    path: PathBuf,
    route: Route,
    /// The CRTC's configuration before we took it, restored on drop.
    saved: Crtc,
    pitch: usize,
    // Field order is drop order: unmap, remove the framebuffer, free the buffer, close.
    mapping: Mapping,
    framebuffer: FramebufferId,
    _buffer: DumbBuffer,
    file: File,
}

impl std::fmt::Debug for Drm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drm")
            .field("path", &self.path)
            .field("connector", &self.route.connector)
            .field("crtc", &self.route.crtc)
            .field("width", &self.route.mode.hdisplay)
            .field("height", &self.route.mode.vdisplay)
            .finish()
    }
}

impl Drm {
    /// Opens the card at `path`, sets up a dumb buffer at the preferred mode of the first
    /// connected connector and starts scanning it out (black until the first frame).
    pub fn open(path: &Path) -> Result<Drm, DisplayError> {
        let file = open_device(path)?;
        let card = Card { file: &file, path };
        let route = card.route()?;
        let mut saved = Crtc {
            crtc_id: route.crtc,
            ..Crtc::default()
        };
        card.ioctl("DRM_IOCTL_MODE_GETCRTC", GETCRTC, &mut saved)?;

        let (width, height) = (
            u32::from(route.mode.hdisplay),
            u32::from(route.mode.vdisplay),
        );
        let mut create = CreateDumb {
            width,
            height,
            bpp: 32,
            ..CreateDumb::default()
        };
        card.ioctl("DRM_IOCTL_MODE_CREATE_DUMB", CREATE_DUMB, &mut create)?;
        let fd = file.as_raw_fd();
        let buffer = DumbBuffer {
            fd,
            handle: create.handle,
        };
        let row_bytes = width as usize * PixelFormat::Xrgb8888.bytes_per_pixel();
        let len = usize::try_from(create.size).unwrap_or(0);
        if (create.pitch as usize) < row_bytes || len < create.pitch as usize * height as usize {
            return Err(DisplayError::Device {
                path: path.to_path_buf(),
                reason: format!(
                    "dumb buffer for {width}x{height} has pitch {} and size {}",
                    create.pitch, create.size
                ),
            });
        }

        let mut add = FbCmd {
            width,
            height,
            pitch: create.pitch,
            bpp: 32,
            depth: 24,
            handle: create.handle,
            ..FbCmd::default()
        };
        card.ioctl("DRM_IOCTL_MODE_ADDFB", ADDFB, &mut add)?;
        let framebuffer = FramebufferId { fd, id: add.fb_id };

        let mut map = MapDumb {
            handle: create.handle,
            ..MapDumb::default()
        };
        card.ioctl("DRM_IOCTL_MODE_MAP_DUMB", MAP_DUMB, &mut map)?;
        let mut mapping = Mapping::new(&file, path, len, map.offset)?;
        mapping.bytes().fill(0);

        let mut connector = route.connector;
        let mut set = Crtc {
            set_connectors_ptr: &mut connector as *mut u32 as u64,
            count_connectors: 1,
            crtc_id: route.crtc,
            fb_id: framebuffer.id,
            mode_valid: 1,
            mode: route.mode,
            ..Crtc::default()
        };
        card.ioctl("DRM_IOCTL_MODE_SETCRTC", SETCRTC, &mut set)?;

        Ok(Drm {
            path: path.to_path_buf(),
            route,
            saved,
            pitch: create.pitch as usize,
            mapping,
            framebuffer,
            _buffer: buffer,
            file,
        })
    }
}

impl Screen for Drm {
    fn size(&self) -> Option<(u32, u32)> {
        Some((
            u32::from(self.route.mode.hdisplay),
            u32::from(self.route.mode.vdisplay),
        ))
    }

    /// Packs the canvas into the scanned-out buffer at its top left, clipped to the mode.
    fn show(&mut self, canvas: &Canvas, _seq: u64) -> Result<(), DisplayError> {
        let format = PixelFormat::Xrgb8888;
        let (mw, mh) = (self.route.mode.hdisplay, self.route.mode.vdisplay);
        let cols = canvas.width().min(u32::from(mw)) as usize;
        let rows = canvas.height().min(u32::from(mh));
        let pitch = self.pitch;
        let bytes = self.mapping.bytes();
        for y in 0..rows {
            let Some(rgb) = canvas.row(y) else { break };
            let start = y as usize * pitch;
            let out = &mut bytes[start..start + cols * format.bytes_per_pixel()];
            format.pack_row(&rgb[..cols * 3], out);
        }
        let mut dirty = FbDirtyCmd {
            fb_id: self.framebuffer.id,
            ..FbDirtyCmd::default()
        };
        match ioctl(
            &self.file,
            &self.path,
            "DRM_IOCTL_MODE_DIRTYFB",
            DIRTYFB,
            &mut dirty,
        ) {
            // Drivers that scan out memory directly have no dirty hook.
            Err(DisplayError::Ioctl { source, .. })
                if source.raw_os_error() == Some(libc::ENOSYS) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

impl Drop for Drm {
    fn drop(&mut self) {
        if self.saved.fb_id == 0 || self.saved.mode_valid == 0 {
            return;
        }
        let mut connector = self.route.connector;
        let mut restore = Crtc {
            set_connectors_ptr: &mut connector as *mut u32 as u64,
            count_connectors: 1,
            ..self.saved
        };
        // Best effort: on failure the screen keeps showing the last frame until the next
        // mode set.
        let _ = ioctl(
            &self.file,
            &self.path,
            "DRM_IOCTL_MODE_SETCRTC",
            SETCRTC,
            &mut restore,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn structs_match_the_kernel_abi() {
        assert_eq!(size_of::<CardRes>(), 64);
        assert_eq!(size_of::<ModeInfo>(), 68);
        assert_eq!(size_of::<Crtc>(), 104);
        assert_eq!(size_of::<GetEncoder>(), 20);
        assert_eq!(size_of::<GetConnector>(), 80);
        assert_eq!(size_of::<FbCmd>(), 28);
        assert_eq!(size_of::<FbDirtyCmd>(), 24);
        assert_eq!(size_of::<CreateDumb>(), 32);
        assert_eq!(size_of::<MapDumb>(), 16);
        assert_eq!(size_of::<DestroyDumb>(), 4);
        assert_eq!(std::mem::offset_of!(Crtc, mode), 36);
        assert_eq!(std::mem::offset_of!(GetConnector, connection), 60);
    }

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // Values of DRM_IOCTL_MODE_* from drm.h, as a C compiler computes them.
        assert_eq!(GETRESOURCES, 0xc040_64a0);
        assert_eq!(GETCRTC, 0xc068_64a1);
        assert_eq!(SETCRTC, 0xc068_64a2);
        assert_eq!(GETENCODER, 0xc014_64a6);
        assert_eq!(GETCONNECTOR, 0xc050_64a7);
        assert_eq!(ADDFB, 0xc01c_64ae);
        assert_eq!(RMFB, 0xc004_64af);
        assert_eq!(DIRTYFB, 0xc018_64b1);
        assert_eq!(CREATE_DUMB, 0xc020_64b2);
        assert_eq!(MAP_DUMB, 0xc010_64b3);
        assert_eq!(DESTROY_DUMB, 0xc004_64b4);
    }

    fn mode(w: u16, h: u16, kind: u32) -> ModeInfo {
        ModeInfo {
            hdisplay: w,
            vdisplay: h,
            kind,
            ..ModeInfo::default()
        }
    }

    #[test]
    fn picks_the_preferred_mode_else_the_first() {
        let driver = 1 << 6;
        let modes = [
            mode(1920, 1080, driver),
            mode(1280, 720, driver | MODE_TYPE_PREFERRED),
        ];
        assert_eq!(pick_mode(&modes).map(|m| m.hdisplay), Some(1280));
        assert_eq!(pick_mode(&modes[..1]).map(|m| m.hdisplay), Some(1920));
        assert_eq!(pick_mode(&[]), None);
    }

    #[test]
    fn picks_the_first_possible_crtc() {
        let crtcs = [31, 45, 59];
        assert_eq!(pick_crtc(0b110, &crtcs), Some(45));
        assert_eq!(pick_crtc(0b001, &crtcs), Some(31));
        assert_eq!(pick_crtc(0b1000, &crtcs), None, "bit past the list");
        assert_eq!(pick_crtc(0, &crtcs), None);
    }

    #[test]
    fn missing_card_is_an_error_naming_it() {
        let err = Drm::open(Path::new("/nonexistent/card7")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/card7: "), "{err}");
    }
}
