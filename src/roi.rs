//! Region of interest: crop each frame to the part that holds image content before it goes to
//! the model, and map the model's mask back to the full frame afterwards.
//!
//! Modes ([`RoiMode`]):
//! - `none`: the whole frame (no copy).
//! - `rect`: a fixed rectangle `[x, y, width, height]` in frame pixels.
//! - `fan`: the ultrasound scan sector (fan) on its black background.
//! - `border`: the lit field of an endoscope inside its black border.
//!
//! `fan` and `border` share one detector, because in both modalities the content is one
//! convex (or nearly convex) bright region on black: a sector or annulus sector, a circle, an
//! octagon, a rectangle. The two names say what a configuration expects and appear in the
//! logs. The detector:
//!
//! 1. A pixel is *bright* when its largest channel exceeds `threshold`.
//! 2. The frame is divided into square blocks, about 128 along its long side (at least 3
//!    pixels a side). A block is
//!    content when at least half of its pixels are bright, so isolated speckle or noise in the
//!    black area, and thin strokes of text, do not make content blocks.
//! 3. Content blocks with fewer than two content neighbours (noise) are dropped. The block map
//!    is closed (dilated then eroded by two blocks) so that a dark structure crossing the field,
//!    such as an anechoic vessel, does not split it; then it is split into
//!    8-connected components. The largest one is kept, and so is every component covering at
//!    least 2 % of the frame (a wide anechoic vessel can split an ultrasound sector into two
//!    large parts). Smaller components are burned-in overlays (text, logos, scale bars, often
//!    in the corners) and are ignored; an overlay within about two blocks of the content
//!    merges with it and widens the rectangle.
//! 4. Within one block of the kept blocks, each pixel row's outermost runs of at least three
//!    bright pixels mark the content's left and right ends, which restores pixel accuracy at
//!    the block edges while still ignoring single noisy pixels.
//! 5. The content region is the convex hull of those row ends, grown by `margin` pixels on
//!    every side (a Minkowski sum with a square); the rectangle is its bounding box, clipped to
//!    the frame. For a sector whose near edge is an arc, the hull also takes in the thin black
//!    lens between that arc and its chord: the region errs towards keeping pixels, so clearing
//!    outside it never removes content.
//!
//! When no bright component is found, or the region covers less than 1 % of the frame, the
//! [`Region`] is the full frame and says why in [`Region::fallback`]; a warning is logged when a
//! stream enters that state. Detection never fails.
//!
//! Detection costs a pass over the frame plus work on the small block grid (0.73 ms at
//! 320×240); it runs on the first frame, every `redetect_every` frames and whenever the frame
//! size changes. The live loop re-detects in the background ([`Roi::in_background`]). The
//! per-frame path only copies the rectangle's rows ([`Roi::apply`]) and, after inference,
//! writes the crop's mask or probability into a full-frame plane, clearing what lies outside
//! the content region ([`Region::restore_mask`], [`Region::restore_probability`],
//! [`Region::restore_segmentation`]).
//!
//! Nothing here does I/O.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use serde::Deserialize;
use thiserror::Error;

use crate::background;
use crate::frame::{Frame, FrameError, Mask, MAX_SIDE};
use crate::postprocess::Segmentation;

/// Default darkness threshold of the auto modes.
const DEFAULT_THRESHOLD: u32 = 16;
/// Default re-detection interval of the auto modes, in frames.
const DEFAULT_REDETECT_EVERY: u32 = 30;
/// Default margin of the auto modes, in pixels.
const DEFAULT_MARGIN: u32 = 2;
/// The detection grid has about this many blocks along the frame's long side.
const GRID_CELLS: usize = 128;
/// Smallest block side in pixels, so that a block averages over a few pixels even in small
/// frames.
const MIN_BLOCK: usize = 3;
/// Radius, in blocks, of the closing that bridges dark gaps inside the content.
const BRIDGE_BLOCKS: usize = 2;
/// Components covering less than this fraction of the block grid, other than the largest,
/// are ignored as overlays.
const MIN_COMPONENT_FRACTION: f64 = 0.02;
/// Shortest run of bright pixels that marks a row's content end.
const MIN_RUN: usize = 3;
/// A detected region smaller than this fraction of the frame is not believed.
const MIN_CONTENT_FRACTION: f64 = 0.01;

/// How the region of interest is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoiMode {
    /// The whole frame.
    #[default]
    None,
    /// A fixed rectangle.
    Rect,
    /// The ultrasound scan sector, detected.
    Fan,
    /// The endoscope's lit field inside its black border, detected.
    Border,
}

impl RoiMode {
    /// The configuration name: `none`, `rect`, `fan` or `border`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoiMode::None => "none",
            RoiMode::Rect => "rect",
            RoiMode::Fan => "fan",
            RoiMode::Border => "border",
        }
    }
}

impl fmt::Display for RoiMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Region-of-interest settings, as written in a configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiConfig {
    /// `none` (the default), `rect`, `fan` or `border`.
    #[serde(default)]
    pub mode: RoiMode,
    /// `[x, y, width, height]` of the crop in frame pixels; required by, and only allowed with,
    /// `mode = "rect"`. A rectangle that does not fit a frame is an error for that frame.
    pub rect: Option<[u32; 4]>,
    /// Auto modes: a pixel whose largest channel is at most this value (0 to 254) counts as
    /// black. Default 16.
    pub threshold: Option<u32>,
    /// Auto modes: detect again every this many frames (besides the first frame and every
    /// change of frame size); 0 detects only then. Default 30.
    pub redetect_every: Option<u32>,
    /// Auto modes: pixels added to the detected region on every side, to keep the dim rim of
    /// the content (at most 16384). Default 2.
    pub margin: Option<u32>,
}

/// Errors of the region-of-interest stage.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum RoiError {
    /// A configuration value is missing, out of range or not allowed with the mode.
    #[error("roi.{key}: {message}")]
    Config { key: &'static str, message: String },
    /// The configured rectangle does not fit the frame.
    #[error("roi.rect {rect} lies outside the {width}x{height} frame")]
    RectOutside { rect: Rect, width: u32, height: u32 },
    /// A frame of another size than the region was computed for.
    #[error(
        "frame {found_width}x{found_height} does not match the region's {width}x{height} frame"
    )]
    FrameSize {
        width: u32,
        height: u32,
        found_width: u32,
        found_height: u32,
    },
    /// A plane to restore is not the size of the region's rectangle.
    #[error(
        "plane {found_width}x{found_height} ({found} values) does not match the \
         {width}x{height} crop"
    )]
    CropSize {
        width: u32,
        height: u32,
        found_width: u32,
        found_height: u32,
        found: usize,
    },
    /// The cropped frame or a restored mask could not be built.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A rectangle in frame pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Number of columns.
    pub width: u32,
    /// Number of rows.
    pub height: u32,
}

impl Rect {
    /// Whether the rectangle lies inside a `width` x `height` frame.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        u64::from(self.x) + u64::from(self.width) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.height) <= u64::from(height)
    }

    /// Whether the pixel (x, y) lies inside the rectangle.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && y >= self.y && x - self.x < self.width && y - self.y < self.height
    }

    /// Number of pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

impl fmt::Display for Rect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {}, {}, {}]",
            self.x, self.y, self.width, self.height
        )
    }
}

/// The region of interest of one frame size: the crop rectangle, the content inside it, and
/// whether detection fell back to the full frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    rect: Rect,
    frame_width: u32,
    frame_height: u32,
    /// Per row of the rectangle, the content's columns `start..end` relative to `rect.x`;
    /// `None` when the content is the whole rectangle.
    content: Option<Vec<(u32, u32)>>,
    fallback: Option<String>,
}

impl Region {
    fn full(width: u32, height: u32, fallback: Option<String>) -> Region {
        Region {
            rect: Rect {
                x: 0,
                y: 0,
                width,
                height,
            },
            frame_width: width,
            frame_height: height,
            content: None,
            fallback,
        }
    }

    /// The crop rectangle in frame pixels.
    pub fn rect(&self) -> Rect {
        self.rect
    }

    /// Width and height of the frames this region is for.
    pub fn frame_size(&self) -> (u32, u32) {
        (self.frame_width, self.frame_height)
    }

    /// Why detection fell back to the full frame; `None` when it found the content (and for
    /// the `none` and `rect` modes).
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Whether the frame pixel (x, y) is content: inside the rectangle and, for the auto
    /// modes, inside the detected region.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        if !self.rect.contains(x, y) {
            return false;
        }
        let (cx, cy) = (x - self.rect.x, (y - self.rect.y) as usize);
        self.content
            .as_ref()
            .is_none_or(|spans| (spans[cy].0..spans[cy].1).contains(&cx))
    }

    /// The rectangle's part of `frame`; borrowed when the rectangle is the whole frame.
    fn crop<'f>(&self, frame: &'f Frame) -> Result<Cow<'f, Frame>, RoiError> {
        let (fw, fh) = (frame.width(), frame.height());
        if (fw, fh) != self.frame_size() {
            return Err(RoiError::FrameSize {
                width: self.frame_width,
                height: self.frame_height,
                found_width: fw,
                found_height: fh,
            });
        }
        let r = self.rect;
        if (r.width, r.height) == (fw, fh) {
            return Ok(Cow::Borrowed(frame));
        }
        let (fw, x0, w) = (fw as usize, r.x as usize, r.width as usize);
        let mut rgb = Vec::with_capacity(w * r.height as usize * 3);
        for y in r.y as usize..(r.y + r.height) as usize {
            let start = (y * fw + x0) * 3;
            rgb.extend_from_slice(&frame.rgb()[start..start + w * 3]);
        }
        let crop = Frame::from_rgb(r.width, r.height, rgb)?.with_spacing(frame.spacing());
        Ok(Cow::Owned(crop))
    }

    /// A mask computed on the crop, at full-frame size and position; pixels outside the
    /// rectangle or outside the content region are cleared.
    pub fn restore_mask(&self, crop: &Mask) -> Result<Mask, RoiError> {
        let bits = self.restore_plane(crop.bits(), crop.width(), crop.height())?;
        Ok(Mask::new(self.frame_width, self.frame_height, bits)?)
    }

    /// A probability plane computed on the crop (`width` x `height`, row-major), at full-frame
    /// size and position; values outside the rectangle or the content region are 0.
    pub fn restore_probability(
        &self,
        crop: &[f32],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>, RoiError> {
        self.restore_plane(crop, width, height)
    }

    /// A segmentation of the crop (probability and mask), at full-frame size and position.
    pub fn restore_segmentation(&self, crop: &Segmentation) -> Result<Segmentation, RoiError> {
        let probability =
            self.restore_probability(&crop.probability, crop.mask.width(), crop.mask.height())?;
        Ok(Segmentation {
            probability,
            mask: self.restore_mask(&crop.mask)?,
        })
    }

    fn restore_plane<T: Copy + Default>(
        &self,
        crop: &[T],
        width: u32,
        height: u32,
    ) -> Result<Vec<T>, RoiError> {
        let r = self.rect;
        if (width, height) != (r.width, r.height) || crop.len() as u64 != r.area() {
            return Err(RoiError::CropSize {
                width: r.width,
                height: r.height,
                found_width: width,
                found_height: height,
                found: crop.len(),
            });
        }
        let fw = self.frame_width as usize;
        let mut out = vec![T::default(); fw * self.frame_height as usize];
        let w = r.width as usize;
        for (row, src) in crop.chunks_exact(w).enumerate() {
            let (start, end) = match &self.content {
                Some(spans) => (spans[row].0 as usize, spans[row].1 as usize),
                None => (0, w),
            };
            let at = (r.y as usize + row) * fw + r.x as usize;
            out[at + start..at + end].copy_from_slice(&src[start..end]);
        }
        Ok(out)
    }
}

/// A cropped frame and the region it came from.
#[derive(Debug, Clone)]
pub struct Cropped<'f> {
    /// The rectangle's pixels, with the source frame's pixel spacing; the source frame itself
    /// when the rectangle is the whole frame.
    pub frame: Cow<'f, Frame>,
    /// The region, for restoring the crop's mask to the full frame.
    pub region: Arc<Region>,
}

/// Checked settings.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Settings {
    None,
    Rect(Rect),
    Auto {
        mode: RoiMode,
        threshold: u8,
        redetect_every: u32,
        margin: u32,
    },
}

/// The region-of-interest stage of one stream: keeps the last region and re-detects it when due.
#[derive(Debug)]
pub struct Roi {
    settings: Settings,
    region: Option<Arc<Region>>,
    /// Frames since the last detection (or since the last background detection started).
    since_detection: u32,
    /// Re-detect on a background thread ([`Roi::in_background`]).
    background: bool,
    /// The background detection under way.
    pending: Option<JoinHandle<Region>>,
}

impl Roi {
    /// Checks `config` and builds the stage.
    ///
    /// Errors name the key: `rect` missing for `mode = "rect"` or given with another mode, a
    /// zero-sized or absurdly placed `rect`, `threshold` above 254, `margin` above
    /// [`MAX_SIDE`], or an auto-mode key given with `none` or `rect`.
    pub fn new(config: &RoiConfig) -> Result<Roi, RoiError> {
        let bad = |key, message: String| RoiError::Config { key, message };
        let mode = config.mode;
        let auto = matches!(mode, RoiMode::Fan | RoiMode::Border);
        if !auto {
            let given = [
                ("threshold", config.threshold.is_some()),
                ("redetect_every", config.redetect_every.is_some()),
                ("margin", config.margin.is_some()),
            ];
            if let Some((key, _)) = given.into_iter().find(|(_, g)| *g) {
                return Err(bad(
                    key,
                    format!("applies to modes fan and border, not {mode}"),
                ));
            }
        }
        let settings = match (mode, config.rect) {
            (RoiMode::Rect, None) => {
                return Err(bad("rect", "is required with mode rect".into()));
            }
            (RoiMode::Rect, Some([x, y, width, height])) => {
                let rect = Rect {
                    x,
                    y,
                    width,
                    height,
                };
                if width == 0 || height == 0 {
                    return Err(bad("rect", format!("{rect} has a zero side")));
                }
                if !rect.fits(MAX_SIDE, MAX_SIDE) {
                    return Err(bad(
                        "rect",
                        format!("{rect} reaches beyond the {MAX_SIDE}-pixel side limit"),
                    ));
                }
                Settings::Rect(rect)
            }
            (_, Some(_)) => {
                return Err(bad("rect", format!("applies to mode rect, not {mode}")));
            }
            (RoiMode::None, None) => Settings::None,
            (RoiMode::Fan | RoiMode::Border, None) => {
                let threshold = config.threshold.unwrap_or(DEFAULT_THRESHOLD);
                let threshold = u8::try_from(threshold)
                    .ok()
                    .filter(|t| *t < u8::MAX)
                    .ok_or_else(|| bad("threshold", format!("{threshold} is outside 0..=254")))?;
                let margin = config.margin.unwrap_or(DEFAULT_MARGIN);
                if margin > MAX_SIDE {
                    return Err(bad(
                        "margin",
                        format!("{margin} exceeds the {MAX_SIDE}-pixel side limit"),
                    ));
                }
                Settings::Auto {
                    mode,
                    threshold,
                    redetect_every: config.redetect_every.unwrap_or(DEFAULT_REDETECT_EVERY),
                    margin,
                }
            }
        };
        Ok(Roi {
            settings,
            region: None,
            since_detection: 0,
            background: false,
            pending: None,
        })
    }

    /// Re-detects the region on a background thread in the idle scheduling class
    /// ([`crate::background`]) instead of on the caller's: frames go on with the last region
    /// until the new one is ready, so re-detection adds no latency to the frame that is due.
    /// The first detection, and one after the frame size changes, still run on the caller's
    /// thread, since no region fits the frame before them.
    pub fn in_background(mut self) -> Roi {
        self.background = true;
        self
    }

    /// Forgets the current region, so the next frame is detected afresh (a new stream, or the
    /// scanner's depth or view changed).
    pub fn reset(&mut self) {
        self.region = None;
        self.since_detection = 0;
        self.pending = None;
    }

    /// Crops `frame` to the region of interest, detecting the region first when due.
    ///
    /// Fails when a `rect` does not fit the frame (naming both); detection itself never fails
    /// but may fall back to the full frame (see [`Region::fallback`]).
    pub fn apply<'f>(&mut self, frame: &'f Frame) -> Result<Cropped<'f>, RoiError> {
        let (w, h) = (frame.width(), frame.height());
        self.take_finished();
        let current = self
            .region
            .as_ref()
            .filter(|r| r.frame_size() == (w, h))
            .cloned();
        let region = match (self.settings, current) {
            (Settings::Auto { redetect_every, .. }, Some(r))
                if redetect_every == 0 || self.since_detection < redetect_every =>
            {
                r
            }
            (
                Settings::Auto {
                    mode,
                    threshold,
                    margin,
                    ..
                },
                Some(r),
            ) if self.background => {
                self.start_background(frame, mode, threshold, margin);
                r
            }
            (Settings::None | Settings::Rect(_), Some(r)) => r,
            (Settings::None, None) => Arc::new(Region::full(w, h, None)),
            (Settings::Rect(rect), None) => {
                if !rect.fits(w, h) {
                    return Err(RoiError::RectOutside {
                        rect,
                        width: w,
                        height: h,
                    });
                }
                Arc::new(Region {
                    rect,
                    frame_width: w,
                    frame_height: h,
                    content: None,
                    fallback: None,
                })
            }
            (
                Settings::Auto {
                    mode,
                    threshold,
                    margin,
                    ..
                },
                _,
            ) => {
                // A background detection started for frames of another size is of no use.
                self.pending = None;
                self.since_detection = 0;
                self.adopt(detect(frame, threshold, margin), mode)
            }
        };
        self.since_detection = self.since_detection.saturating_add(1);
        self.region = Some(Arc::clone(&region));
        Ok(Cropped {
            frame: region.crop(frame)?,
            region,
        })
    }

    /// Starts a background detection on a copy of `frame`, unless one is under way; when the
    /// thread cannot be started, detects on this thread.
    fn start_background(&mut self, frame: &Frame, mode: RoiMode, threshold: u8, margin: u32) {
        self.since_detection = 0;
        if self.pending.is_some() {
            return;
        }
        let copy = frame.clone();
        let started = thread::Builder::new()
            .name("roi-detect".into())
            .spawn(move || {
                background::lower("roi re-detection");
                detect(&copy, threshold, margin)
            });
        match started {
            Ok(handle) => self.pending = Some(handle),
            Err(e) => {
                log::warn!("roi {mode}: cannot start a background detection ({e}); detecting here");
                self.adopt(detect(frame, threshold, margin), mode);
            }
        }
    }

    /// Adopts the background detection's region if it has finished. It is for the current
    /// frame size: a size change detects on the caller's thread and drops the detection under
    /// way.
    fn take_finished(&mut self) {
        if !self.pending.as_ref().is_some_and(JoinHandle::is_finished) {
            return;
        }
        let (Some(handle), Settings::Auto { mode, .. }) = (self.pending.take(), self.settings)
        else {
            return;
        };
        match handle.join() {
            Ok(region) => {
                self.adopt(region, mode);
            }
            Err(_) => {
                log::warn!("roi {mode}: the background detection failed; keeping the last region")
            }
        }
    }

    /// Makes `region` the current one, logging what was found and when the stream enters the
    /// full-frame fallback.
    fn adopt(&mut self, region: Region, mode: RoiMode) -> Arc<Region> {
        let (w, h) = region.frame_size();
        let was_fallback = self.region.as_ref().is_some_and(|r| r.fallback.is_some());
        match region.fallback() {
            Some(why) if !was_fallback => {
                log::warn!("roi {mode}: using the full {w}x{h} frame: {why}")
            }
            Some(why) => log::debug!("roi {mode}: still the full frame: {why}"),
            None => log::debug!("roi {mode}: {} in {w}x{h}", region.rect),
        }
        let region = Arc::new(region);
        self.region = Some(Arc::clone(&region));
        region
    }
}

/// Finds the content region of `frame` (see the module documentation); never fails.
fn detect(frame: &Frame, threshold: u8, margin: u32) -> Region {
    let (fw, fh) = (frame.width(), frame.height());
    let (w, h) = (fw as usize, fh as usize);
    let block = w.max(h).div_ceil(GRID_CELLS).max(MIN_BLOCK);
    let (gw, gh) = (w.div_ceil(block), h.div_ceil(block));

    // Bright pixels and their count per block.
    let mut bright = vec![false; w * h];
    let mut counts = vec![0usize; gw * gh];
    for (y, (row, out)) in frame
        .rgb()
        .chunks_exact(w * 3)
        .zip(bright.chunks_exact_mut(w))
        .enumerate()
    {
        // One flat pass over the row (vectorised), then the counts per block.
        for (px, b) in row.chunks_exact(3).zip(out.iter_mut()) {
            *b = px[0].max(px[1]).max(px[2]) > threshold;
        }
        let grid_row = &mut counts[(y / block) * gw..(y / block + 1) * gw];
        for (bits, count) in out.chunks(block).zip(grid_row.iter_mut()) {
            *count += bits.iter().map(|&b| usize::from(b)).sum::<usize>();
        }
    }
    let blocks: Vec<bool> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let bw = block.min(w - (i % gw) * block);
            let bh = block.min(h - (i / gw) * block);
            2 * n >= bw * bh
        })
        .collect();

    // Pruning drops isolated noisy blocks; closing bridges narrow dark gaps.
    let dilated = morph(&prune(&blocks, gw, gh), gw, gh, BRIDGE_BLOCKS, true);
    let closed = morph(&dilated, gw, gh, BRIDGE_BLOCKS, false);
    let kept = main_components(&closed, gw, gh);
    if !kept.iter().any(|&k| k) {
        return Region::full(
            fw,
            fh,
            Some(format!("no content brighter than {threshold}")),
        );
    }
    let near = morph(&kept, gw, gh, 1, true);

    // Per pixel row, the outermost bright runs within one block of the kept blocks.
    let mut ends = Vec::new();
    for gy in 0..gh {
        let cells = &near[gy * gw..(gy + 1) * gw];
        let (Some(first), Some(last)) = (
            cells.iter().position(|&c| c),
            cells.iter().rposition(|&c| c),
        ) else {
            continue;
        };
        let (lo, hi) = (first * block, ((last + 1) * block).min(w));
        for y in gy * block..((gy + 1) * block).min(h) {
            let row = &bright[y * w + lo..y * w + hi];
            let run = MIN_RUN.min(row.len());
            if let (Some(l), Some(r)) =
                (first_run(row.iter(), run), first_run(row.iter().rev(), run))
            {
                ends.push((y as i64, (lo + l) as i64, (hi - 1 - r) as i64));
            }
        }
    }
    if ends.is_empty() {
        return Region::full(
            fw,
            fh,
            Some(format!(
                "no run of {MIN_RUN} pixels brighter than {threshold}"
            )),
        );
    }

    let m = i64::from(margin);
    let mut points = Vec::with_capacity(ends.len() * 4);
    for &(y, l, r) in &ends {
        points.extend([
            (l - m, y - m),
            (l - m, y + 1 + m),
            (r + 1 + m, y - m),
            (r + 1 + m, y + 1 + m),
        ]);
    }
    let hull = convex_hull(points);
    let spans = scan_convert(&hull, fw, fh);

    let area: u64 = spans.iter().map(|&(a, b)| u64::from(b - a)).sum();
    let fraction = area as f64 / (f64::from(fw) * f64::from(fh));
    if fraction < MIN_CONTENT_FRACTION {
        return Region::full(
            fw,
            fh,
            Some(format!(
                "the detected content covers only {:.2} % of the frame",
                fraction * 100.0
            )),
        );
    }
    let (Some(top), Some(bottom)) = (
        spans.iter().position(|s| s.1 > s.0),
        spans.iter().rposition(|s| s.1 > s.0),
    ) else {
        return Region::full(fw, fh, Some("the detected content is empty".into()));
    };
    let rows = &spans[top..=bottom];
    let left = rows.iter().filter(|s| s.1 > s.0).map(|s| s.0).min();
    let right = rows.iter().map(|s| s.1).max();
    let (Some(left), Some(right)) = (left, right) else {
        return Region::full(fw, fh, Some("the detected content is empty".into()));
    };
    let rect = Rect {
        x: left,
        y: top as u32,
        width: right - left,
        height: (bottom - top + 1) as u32,
    };
    let relative: Vec<(u32, u32)> = rows
        .iter()
        .map(|&(a, b)| if b > a { (a - left, b - left) } else { (0, 0) })
        .collect();
    let full = relative.iter().all(|&s| s == (0, rect.width));
    Region {
        rect,
        frame_width: fw,
        frame_height: fh,
        content: (!full).then_some(relative),
        fallback: None,
    }
}

/// Index of the first pixel of the first run of `run` bright pixels.
fn first_run<'a>(pixels: impl Iterator<Item = &'a bool>, run: usize) -> Option<usize> {
    let mut length = 0;
    for (i, &b) in pixels.enumerate() {
        length = if b { length + 1 } else { 0 };
        if length >= run {
            return Some(i + 1 - run);
        }
    }
    None
}

/// The set cells with at least two set neighbours (of eight): a lone block or a pair, which
/// noise can make, is dropped, while the edge of any sizeable region is kept.
fn prune(cells: &[bool], gw: usize, gh: usize) -> Vec<bool> {
    let mut out = vec![false; cells.len()];
    for y in 0..gh {
        let rows = y.saturating_sub(1)..=(y + 1).min(gh - 1);
        for x in (0..gw).filter(|&x| cells[y * gw + x]) {
            let columns = x.saturating_sub(1)..=(x + 1).min(gw - 1);
            let mut set = 0;
            for ny in rows.clone() {
                set += cells[ny * gw + *columns.start()..=ny * gw + *columns.end()]
                    .iter()
                    .filter(|&&c| c)
                    .count();
            }
            // `set` counts the cell itself.
            out[y * gw + x] = set > 2;
        }
    }
    out
}

/// Square dilation (`grow`) or erosion of a `gw` x `gh` grid by `radius` cells; cells outside
/// the grid are ignored, so erosion does not eat content touching the frame's edge.
fn morph(cells: &[bool], gw: usize, gh: usize, radius: usize, grow: bool) -> Vec<bool> {
    // One pass along lines of `len` cells `step` apart, lines `stride` apart, with a running
    // count of set cells (prefix sums) so the cost does not depend on the radius.
    let pass = |src: &[bool], len: usize, lines: usize, step: usize, stride: usize| {
        let mut out = vec![false; src.len()];
        let mut prefix = vec![0usize; len + 1];
        for line in 0..lines {
            let base = line * stride;
            for i in 0..len {
                prefix[i + 1] = prefix[i] + usize::from(src[base + i * step]);
            }
            for i in 0..len {
                let (a, b) = (i.saturating_sub(radius), (i + radius).min(len - 1));
                let set = prefix[b + 1] - prefix[a];
                out[base + i * step] = if grow { set > 0 } else { set == b + 1 - a };
            }
        }
        out
    };
    let rows = pass(cells, gw, gh, 1, gw);
    pass(&rows, gh, gw, gw, 1)
}

/// The largest 8-connected component of set cells and every component covering at least
/// [`MIN_COMPONENT_FRACTION`] of the grid.
fn main_components(cells: &[bool], gw: usize, gh: usize) -> Vec<bool> {
    let mut label = vec![0usize; cells.len()];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..cells.len() {
        if !cells[start] || label[start] != 0 {
            continue;
        }
        let id = sizes.len();
        let mut size = 0;
        label[start] = id;
        stack.push((start % gw, start / gw));
        while let Some((x, y)) = stack.pop() {
            size += 1;
            for ny in y.saturating_sub(1)..=(y + 1).min(gh - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(gw - 1) {
                    let n = ny * gw + nx;
                    if cells[n] && label[n] == 0 {
                        label[n] = id;
                        stack.push((nx, ny));
                    }
                }
            }
        }
        sizes.push(size);
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let least = (MIN_COMPONENT_FRACTION * cells.len() as f64).ceil() as usize;
    label
        .iter()
        .map(|&l| l != 0 && (sizes[l] >= least || sizes[l] == largest))
        .collect()
}

/// Convex hull (Andrew's monotone chain), vertices in order without repeats.
fn convex_hull(mut points: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    points.sort_unstable();
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    // Lower chain left to right, then upper chain right to left; each drops its last point,
    // which starts the other.
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(points.len() + 1);
    for reversed in [false, true] {
        let start = hull.len();
        for i in 0..points.len() {
            let p = points[if reversed { points.len() - 1 - i } else { i }];
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// For every frame row, the columns `start..end` whose pixel centres lie inside the convex
/// polygon `hull` (integer vertices); `(0, 0)` for rows it misses.
fn scan_convert(hull: &[(i64, i64)], width: u32, height: u32) -> Vec<(u32, u32)> {
    let h = height as usize;
    let mut lo = vec![f64::INFINITY; h];
    let mut hi = vec![f64::NEG_INFINITY; h];
    for (i, &a) in hull.iter().enumerate() {
        let b = hull[(i + 1) % hull.len()];
        if a.1 == b.1 {
            continue;
        }
        let (top, bottom) = if a.1 < b.1 { (a, b) } else { (b, a) };
        // Rows whose centre y + 0.5 lies strictly between the edge's ends.
        let first = top.1.clamp(0, height as i64) as usize;
        let last = bottom.1.clamp(0, height as i64) as usize;
        let slope = (bottom.0 - top.0) as f64 / (bottom.1 - top.1) as f64;
        for y in first..last {
            let x = top.0 as f64 + (y as f64 + 0.5 - top.1 as f64) * slope;
            lo[y] = lo[y].min(x);
            hi[y] = hi[y].max(x);
        }
    }
    let w = f64::from(width);
    lo.iter()
        .zip(&hi)
        .map(|(&l, &r)| {
            // Pixel x is inside when l <= x + 0.5 <= r.
            let start = (l - 0.5).ceil().clamp(0.0, w);
            let end = ((r - 0.5).floor() + 1.0).clamp(0.0, w);
            if end > start {
                (start as u32, end as u32)
            } else {
                (0, 0)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelSpacing;
    use crate::phantom::{generate, Modality, Phantom};

    fn auto(mode: RoiMode) -> Roi {
        Roi::new(&RoiConfig {
            mode,
            ..RoiConfig::default()
        })
        .unwrap()
    }

    fn parse(text: &str) -> Result<Roi, String> {
        let config: RoiConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        Roi::new(&config).map_err(|e| e.to_string())
    }

    fn brightest(frame: &Frame, x: u32, y: u32) -> u8 {
        frame.pixel(x, y).into_iter().max().unwrap_or(0)
    }

    /// A deterministic xorshift sequence.
    fn noise(seed: u32) -> impl FnMut() -> u32 {
        let mut state = seed.max(1);
        move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        }
    }

    /// Bounding box `[x0, y0, x1, y1]` (inclusive) of pixels brighter than 0.
    fn lit_bbox(frame: &Frame) -> [u32; 4] {
        let mut b = [u32::MAX, u32::MAX, 0, 0];
        for y in 0..frame.height() {
            for x in 0..frame.width() {
                if brightest(frame, x, y) > 0 {
                    b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
                }
            }
        }
        b
    }

    /// Checks a detected region against a phantom: every structure pixel is content, every lit
    /// pixel is content, the rectangle hugs the lit area, and most black pixels are excluded.
    fn check_detection(phantom: &Phantom, region: &Region, seed: u64) {
        let f = &phantom.frame;
        assert_eq!(region.fallback(), None, "seed {seed}");
        for s in &phantom.structures {
            for y in 0..f.height() {
                for x in 0..f.width() {
                    if s.mask.get(x, y) {
                        assert!(
                            region.contains(x, y),
                            "seed {seed}: ({x}, {y}) of a structure"
                        );
                    }
                }
            }
        }
        let (mut black, mut black_out) = (0u32, 0u32);
        for y in 0..f.height() {
            for x in 0..f.width() {
                let v = brightest(f, x, y);
                if v > 0 {
                    assert!(
                        region.contains(x, y),
                        "seed {seed}: lit ({x}, {y}) left out"
                    );
                } else {
                    black += 1;
                    black_out += u32::from(!region.contains(x, y));
                }
            }
        }
        let b = lit_bbox(f);
        let r = region.rect();
        let slack = DEFAULT_MARGIN + 1;
        assert!(
            r.x + slack >= b[0]
                && r.y + slack >= b[1]
                && r.x + r.width <= b[2] + 1 + slack
                && r.y + r.height <= b[3] + 1 + slack,
            "seed {seed}: rect {r} vs lit box {b:?}"
        );
        assert!(
            f64::from(black_out) >= 0.75 * f64::from(black),
            "seed {seed}: only {black_out} of {black} black pixels excluded"
        );
    }

    #[test]
    fn rect_crop_and_restore_round_trip_exactly() {
        let mut next = noise(7);
        let (w, h) = (40, 30);
        let rgb: Vec<u8> = (0..w * h * 3).map(|_| next() as u8).collect();
        let spacing = Some(PixelSpacing {
            row_mm: 0.3,
            col_mm: 0.2,
        });
        let frame = Frame::from_rgb(w, h, rgb).unwrap().with_spacing(spacing);
        let mut roi = parse("mode = \"rect\"\nrect = [5, 7, 20, 10]").unwrap();
        let cropped = roi.apply(&frame).unwrap();
        let rect = cropped.region.rect();
        assert_eq!(
            rect,
            Rect {
                x: 5,
                y: 7,
                width: 20,
                height: 10
            }
        );
        let crop = &cropped.frame;
        assert_eq!(
            (crop.width(), crop.height(), crop.spacing()),
            (20, 10, spacing)
        );
        for y in 0..10 {
            for x in 0..20 {
                assert_eq!(crop.pixel(x, y), frame.pixel(x + 5, y + 7));
            }
        }

        let probability: Vec<f32> = (0..200).map(|_| (next() % 1000) as f32 / 999.0).collect();
        let bits: Vec<bool> = probability.iter().map(|&p| p > 0.5).collect();
        let seg = Segmentation {
            mask: Mask::new(20, 10, bits).unwrap(),
            probability,
        };
        let full = cropped.region.restore_segmentation(&seg).unwrap();
        assert_eq!((full.mask.width(), full.mask.height()), (w, h));
        assert_eq!(full.mask.area(), seg.mask.area());
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) as usize;
                if rect.contains(x, y) {
                    let j = ((y - 7) * 20 + (x - 5)) as usize;
                    assert_eq!(full.mask.get(x, y), seg.mask.bits()[j]);
                    assert_eq!(full.probability[i], seg.probability[j]);
                } else {
                    assert!(!full.mask.get(x, y) && full.probability[i] == 0.0);
                }
            }
        }
    }

    #[test]
    fn a_rect_outside_the_frame_is_an_error_naming_both() {
        let frame = Frame::from_gray(40, 30, &[9; 1200]).unwrap();
        let mut roi = parse("mode = \"rect\"\nrect = [30, 0, 20, 10]").unwrap();
        let err = roi.apply(&frame).unwrap_err();
        assert_eq!(
            err.to_string(),
            "roi.rect [30, 0, 20, 10] lies outside the 40x30 frame"
        );
        // The same rectangle fits a larger frame of the same stream.
        let larger = Frame::from_gray(50, 30, &[9; 1500]).unwrap();
        assert_eq!(roi.apply(&larger).unwrap().frame.width(), 20);
    }

    #[test]
    fn none_and_a_full_frame_rect_borrow_the_frame() {
        let frame = Frame::from_gray(4, 3, &[1; 12]).unwrap();
        for mut roi in [
            auto(RoiMode::None),
            parse("mode = \"rect\"\nrect = [0, 0, 4, 3]").unwrap(),
        ] {
            let cropped = roi.apply(&frame).unwrap();
            assert!(matches!(cropped.frame, Cow::Borrowed(_)));
            let mask = Mask::new(4, 3, vec![true; 12]).unwrap();
            assert_eq!(cropped.region.restore_mask(&mask).unwrap(), mask);
        }
    }

    #[test]
    fn restore_rejects_a_plane_of_another_size() {
        let frame = Frame::from_gray(8, 8, &[50; 64]).unwrap();
        let mut roi = parse("mode = \"rect\"\nrect = [1, 1, 4, 3]").unwrap();
        let region = roi.apply(&frame).unwrap().region;
        let err = region
            .restore_mask(&Mask::new(3, 4, vec![false; 12]).unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "plane 3x4 (12 values) does not match the 4x3 crop"
        );
        assert!(matches!(
            region.restore_probability(&[0.0; 11], 4, 3),
            Err(RoiError::CropSize { found: 11, .. })
        ));
    }

    #[test]
    fn fan_detection_finds_the_ultrasound_sector() {
        for seed in 0..6 {
            let phantom = generate(Modality::Ultrasound, 320, 240, seed).unwrap();
            let cropped = auto(RoiMode::Fan).apply(&phantom.frame).unwrap();
            check_detection(&phantom, &cropped.region, seed);
            let r = cropped.region.rect();
            assert_eq!(
                (cropped.frame.width(), cropped.frame.height()),
                (r.width, r.height)
            );
        }
    }

    #[test]
    fn border_detection_finds_the_endoscope_field() {
        for seed in 0..6 {
            let phantom = generate(Modality::Endoscopy, 320, 240, seed).unwrap();
            let region = auto(RoiMode::Border).apply(&phantom.frame).unwrap().region;
            check_detection(&phantom, &region, seed);
        }
    }

    #[test]
    fn restore_clears_pixels_outside_the_content() {
        let phantom = generate(Modality::Ultrasound, 320, 240, 3).unwrap();
        let cropped = auto(RoiMode::Fan).apply(&phantom.frame).unwrap();
        let r = cropped.region.rect();
        let all = Mask::new(r.width, r.height, vec![true; r.area() as usize]).unwrap();
        let full = cropped.region.restore_mask(&all).unwrap();
        let probability = cropped
            .region
            .restore_probability(&vec![1.0; r.area() as usize], r.width, r.height)
            .unwrap();
        let mut cleared_in_rect = 0;
        for y in 0..240 {
            for x in 0..320 {
                let inside = cropped.region.contains(x, y);
                assert_eq!(full.get(x, y), inside);
                assert_eq!(
                    probability[(y * 320 + x) as usize],
                    f32::from(u8::from(inside))
                );
                cleared_in_rect += u32::from(r.contains(x, y) && !inside);
            }
        }
        // The black corners beside the sector, inside its bounding box, are cleared.
        assert!(cleared_in_rect > 1000, "{cleared_in_rect}");
    }

    /// `frame` with speckle in its black pixels: about `percent` % of them set to a random
    /// level, the rest to a low random level at or below 10.
    fn with_noise(frame: &Frame, percent: u32, seed: u32) -> Frame {
        let mut next = noise(seed);
        let mut rgb = frame.rgb().to_vec();
        for px in rgb.chunks_exact_mut(3) {
            if px.iter().all(|&c| c == 0) {
                let v = if next() % 100 < percent {
                    next() as u8
                } else {
                    (next() % 11) as u8
                };
                px.fill(v);
            }
        }
        Frame::from_rgb(frame.width(), frame.height(), rgb).unwrap()
    }

    fn assert_near(a: Rect, b: Rect, tolerance: u32, what: &str) {
        let ends = |r: Rect| [r.x, r.y, r.x + r.width, r.y + r.height];
        for (p, q) in ends(a).into_iter().zip(ends(b)) {
            assert!(p.abs_diff(q) <= tolerance, "{what}: {a} vs {b}");
        }
    }

    #[test]
    fn noise_in_the_black_area_barely_moves_the_rect() {
        for (modality, mode) in [
            (Modality::Ultrasound, RoiMode::Fan),
            (Modality::Endoscopy, RoiMode::Border),
        ] {
            for seed in 0..3 {
                let phantom = generate(modality, 320, 240, seed).unwrap();
                let clean = auto(mode).apply(&phantom.frame).unwrap().region.rect();
                for percent in [2, 10] {
                    let noisy = with_noise(&phantom.frame, percent, seed as u32 + 1);
                    let rect = auto(mode).apply(&noisy).unwrap().region.rect();
                    assert_near(rect, clean, 3, &format!("{modality} {seed} {percent} %"));
                }
            }
        }
    }

    #[test]
    fn corner_overlays_do_not_grow_the_rect() {
        for (modality, mode) in [
            (Modality::Ultrasound, RoiMode::Fan),
            (Modality::Endoscopy, RoiMode::Border),
        ] {
            let seed = if modality == Modality::Ultrasound {
                5
            } else {
                1
            };
            let phantom = generate(modality, 320, 240, seed).unwrap();
            let clean = auto(mode).apply(&phantom.frame).unwrap().region.rect();
            let mut gray: Vec<u8> = phantom.frame.rgb().iter().step_by(3).copied().collect();
            // A solid label in the bottom-left corner and striped "text" in the top-right.
            for y in 222..236 {
                for x in 2..42 {
                    gray[y * 320 + x] = 255;
                }
            }
            for y in 3..13 {
                for x in 262..318 {
                    if x % 3 != 0 {
                        gray[y * 320 + x] = 230;
                    }
                }
            }
            let frame = Frame::from_gray(320, 240, &gray).unwrap();
            let region = auto(mode).apply(&frame).unwrap().region;
            assert_near(region.rect(), clean, 0, modality.as_str());
            assert!(!region.contains(20, 230) && !region.contains(300, 8));
        }
    }

    #[test]
    fn a_dark_band_across_the_field_does_not_split_it() {
        // A bright disc crossed low down by a black band 12 pixels high: the part below the
        // band is far smaller than the part above, and must still count.
        let (w, h) = (320u32, 240u32);
        let gray: Vec<u8> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
                let inside = (x - 160.0).powi(2) + (y - 120.0).powi(2) < 110.0f32.powi(2);
                let band = (190.0..202.0).contains(&y);
                if inside && !band {
                    180
                } else {
                    0
                }
            })
            .collect();
        let frame = Frame::from_gray(w, h, &gray).unwrap();
        let region = auto(RoiMode::Border).apply(&frame).unwrap().region;
        let r = region.rect();
        assert!(r.y <= 10 && r.y + r.height >= 230, "{r}");
        assert!(region.contains(160, 196) && region.contains(160, 225));
    }

    #[test]
    fn a_black_frame_falls_back_to_the_full_frame() {
        let black = Frame::from_gray(64, 48, &[0; 64 * 48]).unwrap();
        let sparse = with_noise(&black, 3, 11);
        for (frame, reason) in [
            (&black, "no content brighter than 16"),
            (&sparse, "no content brighter than 16"),
        ] {
            for mode in [RoiMode::Fan, RoiMode::Border] {
                let cropped = auto(mode).apply(frame).unwrap();
                assert_eq!(cropped.region.fallback(), Some(reason));
                assert_eq!(cropped.region.rect().area(), 64 * 48);
                assert!(matches!(cropped.frame, Cow::Borrowed(_)));
            }
        }
        // A bright 6x6 square is content (four whole blocks), but too small to believe.
        let mut gray = vec![0u8; 96 * 72];
        for y in 30..36 {
            gray[96 * y + 30..96 * y + 36].fill(200);
        }
        let speck = Frame::from_gray(96, 72, &gray).unwrap();
        let mut roi = parse("mode = \"fan\"\nmargin = 0").unwrap();
        let region = roi.apply(&speck).unwrap().region;
        assert_eq!(
            region.fallback(),
            Some("the detected content covers only 0.52 % of the frame")
        );
    }

    #[test]
    fn a_fully_lit_frame_is_its_own_region() {
        let frame = Frame::from_gray(50, 40, &[120; 2000]).unwrap();
        let cropped = auto(RoiMode::Border).apply(&frame).unwrap();
        assert_eq!(cropped.region.fallback(), None);
        assert_eq!(cropped.region.rect().area(), 2000);
        assert!(matches!(cropped.frame, Cow::Borrowed(_)));
    }

    #[test]
    fn any_small_frame_is_handled_without_panicking() {
        let mut next = noise(99);
        for _ in 0..300 {
            let (w, h) = (1 + next() % 20, 1 + next() % 20);
            let level = next() % 3;
            let gray: Vec<u8> = (0..w * h)
                .map(|_| match level {
                    0 => 0,
                    1 => (next() % 2 * 200) as u8,
                    _ => next() as u8,
                })
                .collect();
            let frame = Frame::from_gray(w, h, &gray).unwrap();
            let mut roi = parse("mode = \"fan\"\nmargin = 0").unwrap();
            let cropped = roi.apply(&frame).unwrap();
            let r = cropped.region.rect();
            assert!(
                r.width > 0 && r.height > 0 && r.fits(w, h),
                "{r} in {w}x{h}"
            );
            let mask = Mask::new(r.width, r.height, vec![true; r.area() as usize]).unwrap();
            let full = cropped.region.restore_mask(&mask).unwrap();
            assert_eq!((full.width(), full.height()), (w, h));
        }
    }

    #[test]
    fn detection_runs_on_the_first_frame_every_n_frames_and_on_size_changes() {
        let a = generate(Modality::Endoscopy, 64, 48, 1).unwrap().frame;
        let b = generate(Modality::Endoscopy, 80, 48, 1).unwrap().frame;
        let mut roi = parse("mode = \"border\"\nredetect_every = 3").unwrap();
        let regions: Vec<Arc<Region>> = [&a, &a, &a, &a, &a, &b, &b, &a]
            .iter()
            .map(|f| roi.apply(f).unwrap().region)
            .collect();
        let same: Vec<bool> = regions
            .windows(2)
            .map(|p| Arc::ptr_eq(&p[0], &p[1]))
            .collect();
        // Frames 0..3 share a detection, frame 3 detects again, 5 (new size) and 7 (size back).
        assert_eq!(same, [true, true, false, true, false, true, false]);
        assert_eq!(regions[5].frame_size(), (80, 48));

        let mut once = parse("mode = \"fan\"\nredetect_every = 0").unwrap();
        let first = once.apply(&a).unwrap().region;
        for _ in 0..40 {
            assert!(Arc::ptr_eq(&first, &once.apply(&a).unwrap().region));
        }
        once.reset();
        assert!(!Arc::ptr_eq(&first, &once.apply(&a).unwrap().region));
    }

    /// A black `width` x `height` frame with one bright rectangle `[x0, y0, x1, y1)`.
    fn lit_rect(width: u32, height: u32, [x0, y0, x1, y1]: [u32; 4]) -> Frame {
        let pixels = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| {
                if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
                    200
                } else {
                    0
                }
            })
            .collect::<Vec<u8>>();
        Frame::from_gray(width, height, &pixels).unwrap()
    }

    #[test]
    fn background_redetection_keeps_the_last_region_until_the_new_one_is_ready() {
        let a = lit_rect(64, 48, [4, 4, 30, 30]);
        let c = lit_rect(64, 48, [20, 10, 60, 44]);
        let wide = lit_rect(80, 48, [10, 4, 70, 40]);
        let expected = |f: &Frame| {
            let mut sync = parse("mode = \"border\"\nredetect_every = 2").unwrap();
            sync.apply(f).unwrap().region
        };
        let mut roi = parse("mode = \"border\"\nredetect_every = 2")
            .unwrap()
            .in_background();
        // The first detection runs on this thread.
        let first = roi.apply(&a).unwrap().region;
        assert_eq!(*first, *expected(&a));
        // Not due, then due: both frames go on with the first region.
        assert!(Arc::ptr_eq(&first, &roi.apply(&c).unwrap().region));
        assert!(Arc::ptr_eq(&first, &roi.apply(&c).unwrap().region));
        // The new region arrives on a later frame.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let redetected = loop {
            let region = roi.apply(&c).unwrap().region;
            if !Arc::ptr_eq(&first, &region) {
                break region;
            }
            assert!(std::time::Instant::now() < deadline, "no background result");
            thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(*redetected, *expected(&c));
        assert_ne!(redetected.rect(), first.rect());

        // A size change while a detection for the old size is under way: the new size is
        // detected on this thread, and the old size's result is dropped, not adopted (which
        // would make the next frame detect again).
        let mut roi = parse("mode = \"border\"\nredetect_every = 2")
            .unwrap()
            .in_background();
        for _ in 0..3 {
            roi.apply(&a).unwrap();
        }
        assert!(
            roi.pending.is_some(),
            "the third frame starts a background detection"
        );
        let now_wide = roi.apply(&wide).unwrap().region;
        assert_eq!(*now_wide, *expected(&wide));
        assert!(roi.pending.is_none());
        thread::sleep(std::time::Duration::from_millis(100));
        assert!(Arc::ptr_eq(&now_wide, &roi.apply(&wide).unwrap().region));
    }

    #[test]
    fn bad_configs_are_errors_naming_the_key() {
        let cases = [
            ("mode = \"oval\"", "mode"),
            ("mode = \"fan\"\nthreshhold = 3", "threshhold"),
            ("mode = \"rect\"", "roi.rect: is required with mode rect"),
            (
                "mode = \"fan\"\nrect = [0, 0, 4, 4]",
                "roi.rect: applies to mode rect, not fan",
            ),
            (
                "mode = \"rect\"\nrect = [0, 0, 0, 4]",
                "roi.rect: [0, 0, 0, 4] has a zero side",
            ),
            (
                "mode = \"rect\"\nrect = [16380, 0, 10, 4]",
                "roi.rect: [16380, 0, 10, 4] reaches",
            ),
            ("mode = \"rect\"\nrect = [1, 2, 3]", "rect"),
            (
                "mode = \"border\"\nthreshold = 255",
                "roi.threshold: 255 is outside 0..=254",
            ),
            (
                "margin = 3",
                "roi.margin: applies to modes fan and border, not none",
            ),
            (
                "mode = \"rect\"\nrect = [0, 0, 4, 4]\nredetect_every = 5",
                "roi.redetect_every: applies to modes fan and border, not rect",
            ),
            ("mode = \"fan\"\nmargin = -1", "margin"),
            (
                "mode = \"fan\"\nmargin = 16385",
                "roi.margin: 16385 exceeds the 16384-pixel side limit",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert!(parse("").is_ok());
        assert!(parse("mode = \"fan\"\nthreshold = 254\nredetect_every = 0\nmargin = 0").is_ok());
    }
}
