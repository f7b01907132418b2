//! Procedural phantoms: synthetic ultrasound and endoscopy frames with exact masks and
//! attributes, for demos, tests and training small models without patient data.
//!
//! Everything is drawn from a seed by a small in-module PRNG (SplitMix64) and a few float
//! helpers (`sin`, `exp`, `ln`, `floor`) built from IEEE-754 basic arithmetic only, never the
//! platform's maths library, so the same seed gives byte-identical images on every platform.
//! Sizes and positions are fractions of the frame, so any size from 32×32 up works.
//!
//! **Ultrasound** frames mimic a sector (fan) B-mode image: black outside a fan whose apex sits
//! near the top centre; inside, tissue layers with bright fascia lines and a mottled
//! parenchyma, multiplied by fully developed speckle (the magnitude of spatially correlated
//! Gaussian fields, i.e. Rayleigh distributed, sometimes compounded), depth-dependent gain and
//! a focal zone, then log-compressed as a scanner does. Structures: one or two hypoechoic
//! `lesion`s (round, oval or irregular, soft edged or cyst-like, sometimes with posterior
//! acoustic shadowing or enhancement) and an anechoic `vessel` (a gently curved tube with
//! bright walls, crossing the fan or ending inside it). Drawing them apart keeps each lesion
//! clear of the vessel.
//!
//! **Endoscopy** frames mimic a colonoscope view: a circular or octagonal field of view on a
//! black border; pink to red mucosa with low-frequency colour variation, folds around a dark
//! lumen, a network of thin darker vessels, vignetting, sensor noise and small saturated
//! specular highlights. Structures: a raised `polyp` (a shaded dome of a slightly different
//! hue) and a grey metallic `tool` entering from the edge of the view (tapered shaft, rounded
//! or jaw tip, specular stripe) that occludes what lies under it.
//!
//! Each structure's mask is exactly its visible pixels. Its attributes follow the prompt
//! vocabulary of [`crate::prompt`]:
//!
//! | attribute | value |
//! |-----------|-------|
//! | class | `lesion`, `vessel`, `polyp`, `tool` |
//! | shape | the outline drawn: `round`, `oval`, `irregular`; vessels and tools `elongated` |
//! | color | lesion `dark`, vessel `black`, tool `grey`, polyp `pink` or `red` by its hue |
//! | size | mask area / frame area: `small` < 1 %, `medium` < 4 %, else `large` (see below) |
//! | count | `two` when the lesion mask holds two lesions, else `one` |
//! | location | the mask centroid's cell on a 3×3 grid, e.g. `top left of the image` |
//! | definition | a fixed short clinical definition per class (no commas) |
//!
//! The size thresholds are [`SMALL_MAX_FRACTION`] and [`MEDIUM_MAX_FRACTION`]. [`write_dataset`]
//! writes PNGs and a `samples.jsonl` index (see [`crate::dataset`]).

use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use thiserror::Error;

use crate::dataset::{self, DatasetError, Sample};
use crate::frame::{Frame, FrameError, Mask, MAX_SIDE};
use crate::prompt::Attributes;

/// Smallest phantom side in pixels.
pub const MIN_SIDE: u32 = 32;

/// Largest phantom in pixels (width × height), which bounds the generator's memory.
pub const MAX_PIXELS: u64 = 1 << 24;

/// A structure whose mask covers less than this fraction of the frame is `small`.
pub const SMALL_MAX_FRACTION: f64 = 0.01;

/// A structure whose mask covers less than this fraction of the frame (and is not small) is
/// `medium`; anything larger is `large`.
pub const MEDIUM_MAX_FRACTION: f64 = 0.04;

/// Errors generating or writing phantoms.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PhantomError {
    #[error(
        "phantom size {width}x{height} is not supported (each side {MIN_SIDE} to {MAX_SIDE} \
         pixels, at most {MAX_PIXELS} pixels in all)"
    )]
    BadSize { width: u32, height: u32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: PNG encoding failed: {source}")]
    Png {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("no valid {modality} phantom for seed {seed} at {width}x{height}")]
    Degenerate {
        modality: Modality,
        seed: u64,
        width: u32,
        height: u32,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
}

/// The imaging modality a phantom imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    Ultrasound,
    Endoscopy,
}

impl Modality {
    /// The name used in `samples.jsonl`: `ultrasound` or `endoscopy`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Modality::Ultrasound => "ultrasound",
            Modality::Endoscopy => "endoscopy",
        }
    }

    /// File name prefix of this modality's images.
    fn prefix(self) -> &'static str {
        match self {
            Modality::Ultrasound => "us",
            Modality::Endoscopy => "endo",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One labelled structure: its attributes and the mask of its visible pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Structure {
    pub attributes: Attributes,
    pub mask: Mask,
}

/// A generated frame with its structures, each with a non-empty mask: `lesion` then `vessel`
/// for ultrasound, `polyp` then `tool` for endoscopy.
#[derive(Debug, Clone, PartialEq)]
pub struct Phantom {
    pub modality: Modality,
    pub frame: Frame,
    pub structures: Vec<Structure>,
}

/// Generates one phantom of `width × height` pixels; the same arguments always give the same
/// phantom, byte for byte.
pub fn generate(
    modality: Modality,
    width: u32,
    height: u32,
    seed: u64,
) -> Result<Phantom, PhantomError> {
    check_size(width, height)?;
    // A draw can, very rarely, leave a structure without visible pixels; redraw from a
    // derived seed rather than return a phantom that breaks its promise.
    for attempt in 0..8u64 {
        let mut rng = Rng::new(mix64(
            seed ^ mix64(attempt.wrapping_add(modality as u64 * 16)),
        ));
        let phantom = match modality {
            Modality::Ultrasound => ultrasound::render(width, height, &mut rng)?.0,
            Modality::Endoscopy => endoscopy::render(width, height, &mut rng)?.0,
        };
        if phantom.structures.len() >= 2 && phantom.structures.iter().all(|s| s.mask.area() > 0) {
            return Ok(phantom);
        }
    }
    Err(PhantomError::Degenerate {
        modality,
        seed,
        width,
        height,
    })
}

/// Writes `count` phantoms into `dir` (created if needed) and returns the number of samples
/// (image, structure pairs) written to its `samples.jsonl`.
///
/// Image `i` is ultrasound for even `i` and endoscopy for odd `i`, drawn from a seed mixed
/// from `seed` and `i`. Files: `us_0000.png`, `endo_0001.png`, … (RGB) and one mask per
/// structure, `<stem>_<class>.png` (8-bit gray, 0 or 255). Existing files of the same names are
/// replaced; `count = 0` writes an empty index.
pub fn write_dataset(
    dir: &Path,
    count: usize,
    width: u32,
    height: u32,
    seed: u64,
) -> Result<usize, PhantomError> {
    check_size(width, height)?;
    fs::create_dir_all(dir).map_err(|source| PhantomError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut samples = Vec::with_capacity(count.min(1 << 16) * 2);
    for i in 0..count {
        let modality = if i % 2 == 0 {
            Modality::Ultrasound
        } else {
            Modality::Endoscopy
        };
        let phantom = generate(modality, width, height, mix64(seed ^ mix64(i as u64)))?;
        let stem = format!("{}_{i:04}", modality.prefix());
        let image = format!("{stem}.png");
        write_png(
            &dir.join(&image),
            width,
            height,
            phantom.frame.rgb(),
            ExtendedColorType::Rgb8,
        )?;
        for s in phantom.structures {
            let class = s.attributes.class.as_deref().unwrap_or("structure");
            let mask = format!("{stem}_{class}.png");
            let gray: Vec<u8> = s
                .mask
                .bits()
                .iter()
                .map(|&b| if b { 255 } else { 0 })
                .collect();
            write_png(
                &dir.join(&mask),
                width,
                height,
                &gray,
                ExtendedColorType::L8,
            )?;
            samples.push(Sample::from_attributes(
                image.clone(),
                mask,
                modality.as_str(),
                s.attributes,
            ));
        }
    }
    dataset::write_samples(dir, &samples)?;
    Ok(samples.len())
}

fn check_size(width: u32, height: u32) -> Result<(), PhantomError> {
    let sides_ok =
        (MIN_SIDE..=MAX_SIDE).contains(&width) && (MIN_SIDE..=MAX_SIDE).contains(&height);
    if !sides_ok || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(PhantomError::BadSize { width, height });
    }
    Ok(())
}

fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    bytes: &[u8],
    color: ExtendedColorType,
) -> Result<(), PhantomError> {
    let io_err = |source| PhantomError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(fs::File::create(path).map_err(io_err)?);
    PngEncoder::new(&mut out)
        .write_image(bytes, width, height, color)
        .map_err(|source| PhantomError::Png {
            path: path.to_path_buf(),
            source,
        })?;
    out.flush().map_err(io_err)
}

// ---------------------------------------------------------------------------------------------
// Attributes

/// Fixed short definitions, one per class (no commas: they are joined into prompts with ", ").
fn definition(class: &str) -> &'static str {
    match class {
        "lesion" => "a localized area of abnormal tissue such as a tumor or cyst",
        "vessel" => "a tubular channel that carries blood through the body",
        "polyp" => "an abnormal growth of tissue projecting from the mucous membrane",
        _ => "a metallic instrument inserted through the endoscope to treat tissue",
    }
}

/// `small`, `medium` or `large` from the fraction of the frame a mask covers.
fn size_word(area_fraction: f64) -> &'static str {
    if area_fraction < SMALL_MAX_FRACTION {
        "small"
    } else if area_fraction < MEDIUM_MAX_FRACTION {
        "medium"
    } else {
        "large"
    }
}

/// The cell of a 3×3 grid holding the point (`fx`, `fy`), both fractions of the frame.
fn location_word(fx: f64, fy: f64) -> &'static str {
    let cell = |f: f64| ((f * 3.0).floor().clamp(0.0, 2.0)) as usize;
    const NAMES: [[&str; 3]; 3] = [
        [
            "top left of the image",
            "top of the image",
            "top right of the image",
        ],
        [
            "left of the image",
            "center of the image",
            "right of the image",
        ],
        [
            "bottom left of the image",
            "bottom of the image",
            "bottom right of the image",
        ],
    ];
    NAMES[cell(fy)][cell(fx)]
}

/// The mask's centroid as fractions of the frame (pixel centres), if it has pixels.
fn centroid(mask: &Mask) -> Option<(f64, f64)> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let (mut sx, mut sy, mut n) = (0f64, 0f64, 0usize);
    for (i, _) in mask.bits().iter().enumerate().filter(|(_, &b)| b) {
        sx += (i % w) as f64 + 0.5;
        sy += (i / w) as f64 + 0.5;
        n += 1;
    }
    (n > 0).then(|| (sx / n as f64 / w as f64, sy / n as f64 / h as f64))
}

/// A structure from its mask and the attributes decided while drawing it.
fn structure(
    class: &str,
    shape: &str,
    color: &str,
    count: &str,
    width: u32,
    height: u32,
    bits: Vec<bool>,
) -> Result<Structure, FrameError> {
    let mask = Mask::new(width, height, bits)?;
    let fraction = mask.area() as f64 / (f64::from(width) * f64::from(height));
    let (fx, fy) = centroid(&mask).unwrap_or((0.5, 0.5));
    let attributes = Attributes {
        class: Some(class.to_string()),
        shape: Some(shape.to_string()),
        color: Some(color.to_string()),
        size: Some(size_word(fraction).to_string()),
        count: Some(count.to_string()),
        location: Some(location_word(fx, fy).to_string()),
        definition: Some(definition(class).to_string()),
    };
    Ok(Structure { attributes, mask })
}

// ---------------------------------------------------------------------------------------------
// Randomness and deterministic arithmetic

/// The SplitMix64 output function: a strong 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: tiny, fast and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Log-uniform in [lo, hi): every scale equally likely.
    fn log_range(&mut self, lo: f32, hi: f32) -> f32 {
        lo * exp(self.unit() * ln(hi / lo))
    }

    fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// A fresh seed for a noise field.
    fn noise(&mut self) -> Noise {
        Noise(self.next_u64())
    }
}

const PI: f32 = std::f32::consts::PI;

/// Sine from arithmetic only (platform libm results may differ in the last bit).
fn sin(x: f32) -> f32 {
    let k = floor(x * (0.5 / PI) + 0.5);
    let mut r = x - k * (2.0 * PI);
    if r > 0.5 * PI {
        r = PI - r;
    } else if r < -0.5 * PI {
        r = -PI - r;
    }
    let r2 = r * r;
    r * (1.0
        - r2 / 6.0 * (1.0 - r2 / 20.0 * (1.0 - r2 / 42.0 * (1.0 - r2 / 72.0 * (1.0 - r2 / 110.0)))))
}

fn cos(x: f32) -> f32 {
    sin(x + 0.5 * PI)
}

/// e^x from arithmetic only; `x` is clamped to the normal f32 range.
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = floor(x * std::f32::consts::LOG2_E + 0.5);
    let r = x - k * std::f32::consts::LN_2;
    let p = 1.0
        + r * (1.0
            + r / 2.0
                * (1.0
                    + r / 3.0
                        * (1.0 + r / 4.0 * (1.0 + r / 5.0 * (1.0 + r / 6.0 * (1.0 + r / 7.0))))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// Natural logarithm from arithmetic only; values below 1e-30 are treated as 1e-30.
fn ln(x: f32) -> f32 {
    let x = if x >= 1e-30 { x } else { 1e-30 };
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 / 9.0)));
    e as f32 * std::f32::consts::LN_2 + 2.0 * s * series
}

/// Floor through an integer cast (inlined, unlike `f32::floor` on baseline x86-64); exact
/// for |x| < 2³¹, which covers every coordinate drawn here.
#[inline]
fn floor(x: f32) -> f32 {
    let t = x as i32 as f32;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

#[inline]
fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// Value noise: smoothly interpolated random values on an integer lattice.
#[derive(Clone, Copy)]
struct Noise(u64);

impl Noise {
    fn lattice(self, ix: i32, iy: i32) -> f32 {
        let key = (u64::from(ix as u32) << 32) | u64::from(iy as u32);
        (mix64(self.0 ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 40) as f32
            * (1.0 / 16_777_216.0)
    }

    /// In [0, 1], one lattice cell per unit.
    fn value(self, x: f32, y: f32) -> f32 {
        let (x0, y0) = (floor(x), floor(y));
        let (fx, fy) = (x - x0, y - y0);
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let (ix, iy) = (x0 as i32, y0 as i32);
        let top = lerp(
            self.lattice(ix, iy),
            self.lattice(ix.wrapping_add(1), iy),
            sx,
        );
        let bottom = lerp(
            self.lattice(ix, iy.wrapping_add(1)),
            self.lattice(ix.wrapping_add(1), iy.wrapping_add(1)),
            sx,
        );
        lerp(top, bottom, sy)
    }

    /// Fractal sum of `octaves` value noises, each at twice the frequency; in [0, 1].
    fn fbm(self, x: f32, y: f32, octaves: u32) -> f32 {
        let (mut sum, mut amp, mut norm, mut f) = (0.0, 1.0, 0.0, 1.0);
        for o in 0..octaves {
            let layer = Noise(
                self.0
                    .wrapping_add(u64::from(o).wrapping_mul(0xD1B5_4A32_D192_ED03)),
            );
            sum += amp * layer.value(x * f + o as f32 * 17.31, y * f - o as f32 * 7.73);
            norm += amp;
            amp *= 0.5;
            f *= 2.0;
        }
        sum / norm
    }

    /// Roughly standard normal lattice values (a sum of four uniforms).
    fn gaussian(self, ix: i32, iy: i32) -> f32 {
        let key = (u64::from(ix as u32) << 32) | u64::from(iy as u32);
        let h = mix64(self.0 ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let sum: u64 = (0..4).map(|k| (h >> (16 * k)) & 0xffff).sum();
        (sum as f32 / 65_536.0 - 2.0) * 1.732_050_8
    }

    /// Per-pixel white noise, uniform in [0, 1).
    fn white(self, x: u32, y: u32) -> f32 {
        self.lattice(x as i32, y as i32)
    }
}

/// Layers of value noise over the whole frame with their lattice values computed once: much
/// cheaper per pixel than hashing every lattice corner.
struct Field {
    octaves: Vec<Octave>,
    norm: f32,
}

struct Octave {
    fy: f32,
    oy: f32,
    iy0: i32,
    cols: usize,
    rows: usize,
    amp: f32,
    values: Vec<f32>,
    /// Per frame column: lattice column and smoothed fraction at the pixel centre.
    columns: Vec<(usize, f32)>,
}

impl Field {
    /// `octaves` layers at (`fx`, `fy`) lattice cells per pixel, each at twice the frequency
    /// and half the amplitude of the one before; covers the frame `w × h`. Lattice values are
    /// uniform in [0, 1], or roughly standard normal when `gaussian`.
    fn new(
        noise: Noise,
        fx: f32,
        fy: f32,
        octaves: u32,
        size: (u32, u32),
        gaussian: bool,
    ) -> Field {
        let (w, h) = (size.0 as f32, size.1 as f32);
        let mut layers = Vec::new();
        let (mut amp, mut norm, mut scale) = (1.0, 0.0, 1.0);
        for o in 0..octaves {
            let layer = Noise(
                noise
                    .0
                    .wrapping_add(u64::from(o).wrapping_mul(0xD1B5_4A32_D192_ED03)),
            );
            let (fxo, fyo) = (fx * scale, fy * scale);
            let (ox, oy) = (o as f32 * 17.31, o as f32 * -7.73);
            let (ix0, iy0) = (ox.floor() as i32, oy.floor() as i32);
            let ix1 = (w * fxo + ox).floor() as i32 + 1;
            let iy1 = (h * fyo + oy).floor() as i32 + 1;
            let mut values = Vec::with_capacity(((ix1 - ix0 + 1) * (iy1 - iy0 + 1)) as usize);
            for iy in iy0..=iy1 {
                for ix in ix0..=ix1 {
                    values.push(if gaussian {
                        layer.gaussian(ix, iy)
                    } else {
                        layer.lattice(ix, iy)
                    });
                }
            }
            let cols = (ix1 - ix0 + 1) as usize;
            let columns = (0..size.0)
                .map(|x| cell(x as f32 + 0.5, fxo, ox, ix0, cols))
                .collect();
            layers.push(Octave {
                fy: fyo,
                oy,
                iy0,
                cols,
                rows: (iy1 - iy0 + 1) as usize,
                amp,
                values,
                columns,
            });
            norm += amp;
            amp *= 0.5;
            scale *= 2.0;
        }
        Field {
            octaves: layers,
            norm,
        }
    }

    /// Row `y` of the field at pixel centres, into `out` (one value per column).
    fn row(&self, y: u32, out: &mut [f32]) {
        out.fill(0.0);
        for o in &self.octaves {
            let (iy, sy) = cell(y as f32 + 0.5, o.fy, o.oy, o.iy0, o.rows);
            let v = &o.values[iy * o.cols..];
            for (acc, &(ix, sx)) in out.iter_mut().zip(&o.columns) {
                let top = lerp(v[ix], v[ix + 1], sx);
                let bottom = lerp(v[ix + o.cols], v[ix + o.cols + 1], sx);
                *acc += o.amp * lerp(top, bottom, sy);
            }
        }
        for acc in out.iter_mut() {
            *acc /= self.norm;
        }
    }
}

/// The lattice cell (clamped to the `n` stored ones) and smoothed fraction of coordinate `p`
/// at `f` cells per pixel, offset `o`, for a lattice starting at `i0`.
fn cell(p: f32, f: f32, o: f32, i0: i32, n: usize) -> (usize, f32) {
    let s = p * f + o;
    let s0 = floor(s);
    let t = s - s0;
    let i = (s0 as i32).saturating_sub(i0).clamp(0, n as i32 - 2) as usize;
    (i, t * t * (3.0 - 2.0 * t))
}

/// A soft-edged closed shape: an ellipse whose radius is modulated by a few harmonics
/// (a small modulation reads as round or oval, a large one as irregular).
struct Blob {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    ca: f32,
    sa: f32,
    /// Amplitudes and phases (cos, sin) of harmonics 2 to 5.
    harmonics: [(f32, f32, f32); 4],
    /// Largest distance from the centre to the outline, in pixels.
    reach: f32,
}

/// The kind of outline a blob is drawn with; its name is the `shape` attribute.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Outline {
    Round,
    Oval,
    Irregular,
}

impl Outline {
    fn pick(rng: &mut Rng) -> Outline {
        match rng.unit() {
            u if u < 0.3 => Outline::Round,
            u if u < 0.65 => Outline::Oval,
            _ => Outline::Irregular,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Outline::Round => "round",
            Outline::Oval => "oval",
            Outline::Irregular => "irregular",
        }
    }

    /// Largest reach of a blob with this outline and mean radius `r`.
    fn reach(self, r: f32) -> f32 {
        match self {
            Outline::Round => r * 1.12,
            Outline::Oval => r * 1.5,
            Outline::Irregular => r * 1.75,
        }
    }
}

impl Blob {
    /// A blob of mean radius `r` (pixels) centred at (`cx`, `cy`).
    fn new(outline: Outline, cx: f32, cy: f32, r: f32, rng: &mut Rng) -> Blob {
        let (aspect, wobble) = match outline {
            Outline::Round => (rng.range(1.0, 1.08), 0.02),
            Outline::Oval => (rng.range(1.55, 2.1), 0.03),
            Outline::Irregular => (rng.range(1.0, 1.4), rng.range(0.2, 0.3)),
        };
        let angle = rng.range(0.0, PI);
        let mut harmonics = [(0.0, 1.0, 0.0); 4];
        let mut total = 0.0;
        for h in &mut harmonics {
            let amp = rng.range(0.3, 1.0);
            let phase = rng.range(0.0, 2.0 * PI);
            *h = (amp, cos(phase), sin(phase));
            total += amp;
        }
        for h in &mut harmonics {
            h.0 *= wobble / total;
        }
        let root = aspect.sqrt();
        let (rx, ry) = (r * root, r / root);
        Blob {
            cx,
            cy,
            rx,
            ry,
            ca: cos(angle),
            sa: sin(angle),
            harmonics,
            reach: rx.max(ry) * (1.0 + wobble),
        }
    }

    /// Normalised local coordinates (u, v, ρ): ρ < 1 inside, 1 on the outline; (u, v) is the
    /// direction of the point in the image frame scaled by ρ.
    fn local(&self, x: f32, y: f32) -> (f32, f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.ca + dy * self.sa) / self.rx;
        let v = (-dx * self.sa + dy * self.ca) / self.ry;
        let r = (u * u + v * v).sqrt();
        if r < 1e-6 {
            return (0.0, 0.0, 0.0);
        }
        let (c1, s1) = (u / r, v / r);
        let (mut ck, mut sk) = (c1, s1);
        let mut radius = 1.0;
        for &(amp, cp, sp) in &self.harmonics {
            (ck, sk) = (ck * c1 - sk * s1, sk * c1 + ck * s1);
            radius += amp * (ck * cp - sk * sp);
        }
        let rho = r / radius;
        // Back to image axes: the direction of (dx, dy), with length ρ.
        let len = (dx * dx + dy * dy).sqrt();
        (dx / len * rho, dy / len * rho, rho)
    }

    /// ρ of [`Blob::local`], or a large value far outside the blob (cheap).
    fn rho(&self, x: f32, y: f32) -> f32 {
        let far = 1.6 * self.reach + 2.0;
        if (x - self.cx).abs() > far || (y - self.cy).abs() > far {
            return 10.0;
        }
        self.local(x, y).2
    }
}

/// Pixel-centre coordinates of pixel (x, y).
fn centre(x: u32, y: u32) -> (f32, f32) {
    (x as f32 + 0.5, y as f32 + 0.5)
}

// ---------------------------------------------------------------------------------------------
// Ultrasound

mod ultrasound {
    use super::*;

    /// The imaging sector: an annulus sector with its apex at (`cx`, `ay`).
    pub(super) struct Fan {
        pub cx: f32,
        pub ay: f32,
        pub r0: f32,
        pub r1: f32,
        pub half: f32,
        pub cos_half: f32,
        pub tan_half: f32,
        pub width: f32,
        pub height: f32,
    }

    impl Fan {
        fn new(w: u32, h: u32, rng: &mut Rng) -> Fan {
            let (wf, hf) = (w as f32, h as f32);
            let mut half = rng.range(30.0, 42.0) * (PI / 180.0);
            let mut ay = hf * rng.range(-0.3, 0.0);
            let y_top = hf * rng.range(0.02, 0.08);
            let y_bot = hf * rng.range(0.9, 0.97);
            let (mut r0, mut r1) = (y_top - ay, y_bot - ay);
            let max_half_width = 0.49 * wf;
            while r1 * sin(half) > max_half_width && half > 26.0 * (PI / 180.0) {
                half -= PI / 180.0;
            }
            let max_r1 = max_half_width / sin(half);
            if r1 > max_r1 {
                // A narrow frame: a shorter fan that still starts near the top.
                r1 = max_r1;
                r0 = r0.min(0.25 * r1);
                ay = y_top - r0;
                r1 = r1.min(y_bot - ay);
            }
            Fan {
                cx: 0.5 * wf,
                ay,
                r0,
                r1,
                half,
                cos_half: cos(half),
                tan_half: sin(half) / cos(half),
                width: wf,
                height: hf,
            }
        }

        /// Whether the point lies inside the fan.
        pub fn contains(&self, x: f32, y: f32) -> bool {
            let (dx, dy) = (x - self.cx, y - self.ay);
            let r2 = dx * dx + dy * dy;
            r2 >= self.r0 * self.r0
                && r2 <= self.r1 * self.r1
                && dy > 0.0
                && dy * dy >= r2 * self.cos_half * self.cos_half
        }

        /// Distance from an inside point to the fan's outline and the frame's edges.
        fn margin(&self, x: f32, y: f32) -> f32 {
            if !self.contains(x, y) {
                return -1.0;
            }
            let (dx, dy) = (x - self.cx, y - self.ay);
            let r = (dx * dx + dy * dy).sqrt();
            let sin_half = self.tan_half * self.cos_half;
            // Distances to the two side rays (unit directions (±sin, cos)).
            let left = (dx * self.cos_half + dy * sin_half).abs();
            let right = (dx * self.cos_half - dy * sin_half).abs();
            (r - self.r0)
                .min(self.r1 - r)
                .min(left)
                .min(right)
                .min(y)
                .min(self.height - y)
                .min(x)
                .min(self.width - x)
        }

        /// The point at relative depth `d` (0 near, 1 far) and relative angle `a` (-1 to 1).
        fn point(&self, d: f32, a: f32) -> (f32, f32) {
            let r = self.r0 + d * (self.r1 - self.r0);
            let angle = a * self.half;
            (self.cx + r * sin(angle), self.ay + r * cos(angle))
        }
    }

    /// A hypoechoic lesion and what it does to the echoes behind it.
    struct Lesion {
        blob: Blob,
        contrast: f32,
        edge: f32,
        halo: f32,
        /// Negative: shadowing; positive: enhancement.
        posterior: f32,
        /// Unit beam direction through the centre, the centre's distance from the apex, and
        /// the half-width of the posterior column.
        ux: f32,
        uy: f32,
        along: f32,
        column: f32,
    }

    /// An anechoic tube: a gently curved centre line in a frame rotated by the tilt.
    struct Vessel {
        cx: f32,
        cy: f32,
        ca: f32,
        sa: f32,
        radius: f32,
        wall: f32,
        wall_gain: f32,
        lumen: f32,
        bend: f32,
        omega: f32,
        phase: f32,
        half_len: f32,
        wobble: f32,
        wobble_omega: f32,
    }

    impl Vessel {
        /// Distance to the centre line and the local lumen radius.
        fn dist(&self, x: f32, y: f32) -> (f32, f32) {
            let (dx, dy) = (x - self.cx, y - self.cy);
            let u = dx * self.ca + dy * self.sa;
            let v = -dx * self.sa + dy * self.ca;
            let reach = self.bend + self.radius * (1.0 + self.wobble) + self.wall + 3.0;
            if v.abs() > reach && u.abs() <= self.half_len {
                return (v.abs() - self.bend, self.radius);
            }
            let radius = self.radius * (1.0 + self.wobble * sin(self.wobble_omega * u));
            if u.abs() > self.half_len {
                let ue = self.half_len.copysign(u);
                let ve = self.bend * sin(self.omega * ue + self.phase);
                let (du, dv) = (u.abs() - self.half_len, v - ve);
                return ((du * du + dv * dv).sqrt(), radius);
            }
            let arg = self.omega * u + self.phase;
            let vc = self.bend * sin(arg);
            let slope = self.bend * self.omega * cos(arg);
            ((v - vc).abs() / (1.0 + slope * slope).sqrt(), radius)
        }
    }

    fn place_vessel(fan: &Fan, s: f32, rng: &mut Rng) -> Vessel {
        let radius = (s * rng.log_range(0.01, 0.045)).max(1.6);
        let wall = (radius * rng.range(0.25, 0.45)).max(1.5);
        let mut centre = fan.point(0.55, 0.0);
        for _ in 0..40 {
            let p = fan.point(rng.range(0.3, 0.8), rng.range(-0.5, 0.5));
            if fan.margin(p.0, p.1) > radius + wall + 1.0 {
                centre = p;
                break;
            }
        }
        let tilt = rng.range(-30.0, 30.0) * (PI / 180.0);
        let span = fan.r1 - fan.r0;
        let crosses = rng.chance(0.5);
        let half_len = if crosses {
            f32::MAX
        } else {
            span * rng.range(0.12, 0.45) + 4.0 * radius
        };
        Vessel {
            cx: centre.0,
            cy: centre.1,
            ca: cos(tilt),
            sa: sin(tilt),
            radius,
            wall,
            wall_gain: rng.range(3.0, 6.0),
            lumen: rng.range(0.015, 0.05),
            bend: radius * rng.range(0.0, 1.5),
            omega: 2.0 * PI / (span * rng.range(0.8, 2.0)),
            phase: rng.range(0.0, 2.0 * PI),
            half_len,
            wobble: rng.range(0.0, 0.12),
            wobble_omega: 2.0 * PI / (span * rng.range(0.3, 0.8)),
        }
    }

    fn place_lesion(
        fan: &Fan,
        s: f32,
        outline: Outline,
        mean_r: f32,
        avoid: &[(f32, f32, f32)],
        vessel: &Vessel,
        rng: &mut Rng,
    ) -> Option<Lesion> {
        let mut r = mean_r;
        for attempt in 0..60 {
            if attempt % 12 == 11 {
                r *= 0.85;
            }
            let reach = outline.reach(r);
            let (cx, cy) = fan.point(rng.range(0.12, 0.85), rng.range(-0.8, 0.8));
            if fan.margin(cx, cy) < reach * 1.05 + 1.0 {
                continue;
            }
            let (dv, rv) = vessel.dist(cx, cy);
            if dv < reach + rv + vessel.wall + 0.02 * s + 2.0 {
                continue;
            }
            let clear = avoid.iter().all(|&(ox, oy, or)| {
                let (dx, dy) = (cx - ox, cy - oy);
                (dx * dx + dy * dy).sqrt() > reach + or + 0.02 * s + 2.0
            });
            if !clear {
                continue;
            }
            return Some(lesion_at(fan, outline, cx, cy, r, rng));
        }
        None
    }

    fn lesion_at(fan: &Fan, outline: Outline, cx: f32, cy: f32, r: f32, rng: &mut Rng) -> Lesion {
        let blob = Blob::new(outline, cx, cy, r, rng);
        let cyst = rng.chance(0.2);
        let (contrast, edge) = if cyst {
            (rng.range(0.9, 0.97), rng.range(0.03, 0.08))
        } else {
            (rng.range(0.7, 0.92), rng.range(0.08, 0.25))
        };
        let posterior = match rng.unit() {
            _ if cyst => rng.range(0.4, 0.9),
            u if u < 0.35 => -rng.range(0.3, 0.6),
            u if u < 0.6 => rng.range(0.25, 0.6),
            _ => 0.0,
        };
        let (dx, dy) = (cx - fan.cx, cy - fan.ay);
        let along = (dx * dx + dy * dy).sqrt().max(1e-3);
        Lesion {
            contrast,
            edge: edge.max(1.0 / r),
            halo: if rng.chance(0.2) {
                rng.range(0.3, 0.8)
            } else {
                0.0
            },
            posterior,
            ux: dx / along,
            uy: dy / along,
            along,
            column: r * rng.range(0.7, 0.95),
            blob,
        }
    }

    /// Horizontal tissue interfaces: depth (fraction of the fan's height) per column.
    struct Layers {
        bounds: Vec<Vec<f32>>,
        echoes: Vec<f32>,
        fascia: Vec<f32>,
        line_width: f32,
    }

    impl Layers {
        fn new(w: u32, s: f32, span: f32, rng: &mut Rng) -> Layers {
            let n = 1 + (rng.unit() * 3.0) as usize;
            let mut bases: Vec<f32> = (0..n).map(|_| rng.range(0.06, 0.6)).collect();
            bases.sort_by(f32::total_cmp);
            let bounds = bases
                .iter()
                .map(|&b| {
                    let wobble = rng.noise();
                    let amp = rng.range(0.01, 0.06);
                    let slope = rng.range(-0.08, 0.08);
                    let freq = rng.range(2.0, 5.0) / s;
                    (0..w)
                        .map(|x| {
                            let xf = x as f32 + 0.5;
                            b + amp * (wobble.fbm(xf * freq, 0.5, 2) - 0.5) * 2.0
                                + slope * (xf / s - 0.5)
                        })
                        .collect()
                })
                .collect();
            Layers {
                bounds,
                echoes: (0..=n).map(|_| rng.range(0.3, 0.85)).collect(),
                fascia: (0..n).map(|_| rng.range(0.4, 1.6)).collect(),
                line_width: (1.0 / span).max(rng.range(0.004, 0.01)),
            }
        }

        fn echo(&self, x: usize, t: f32) -> f32 {
            let mut layer = 0;
            let mut lines = 0.0;
            for (i, b) in self.bounds.iter().enumerate() {
                let d = t - b[x];
                if d > 0.0 {
                    layer = i + 1;
                }
                let z = d / self.line_width;
                if z.abs() < 4.0 {
                    lines += self.fascia[i] * exp(-z * z);
                }
            }
            self.echoes[layer] + lines
        }
    }

    /// A correlated Gaussian random field: white noise blurred by a Gaussian of standard
    /// deviations (`sx`, `sy`) pixels, rescaled to unit variance.
    fn gaussian_field(w: u32, h: u32, sx: f32, sy: f32, noise: Noise) -> Vec<f32> {
        let kernel = |sigma: f32| -> Vec<f32> {
            let radius = (2.0 * sigma).ceil() as i32;
            let raw: Vec<f32> = (-radius..=radius)
                .map(|k| exp(-(k * k) as f32 / (2.0 * sigma * sigma)))
                .collect();
            let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
            raw.into_iter().map(|v| v / norm).collect()
        };
        let (kx, ky) = (kernel(sx), kernel(sy));
        let (w, h) = (w as usize, h as usize);
        let white: Vec<f32> = (0..w * h)
            .map(|i| noise.gaussian((i % w) as i32, (i / w) as i32))
            .collect();
        let blur = |src: &[f32], kernel: &[f32], horizontal: bool| -> Vec<f32> {
            let r = (kernel.len() / 2) as isize;
            let mut out = vec![0f32; src.len()];
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0;
                    for (k, &wt) in kernel.iter().enumerate() {
                        let o = k as isize - r;
                        let i = if horizontal {
                            y * w + (x as isize + o).clamp(0, w as isize - 1) as usize
                        } else {
                            (y as isize + o).clamp(0, h as isize - 1) as usize * w + x
                        };
                        acc += wt * src[i];
                    }
                    out[y * w + x] = acc;
                }
            }
            out
        };
        blur(&blur(&white, &kx, true), &ky, false)
    }

    /// Draws an ultrasound phantom; also returns its fan (for tests).
    pub(super) fn render(w: u32, h: u32, rng: &mut Rng) -> Result<(Phantom, Fan), FrameError> {
        let s = w.min(h) as f32;
        let fan = Fan::new(w, h, rng);
        let span = fan.r1 - fan.r0;
        let layers = Layers::new(w, s, span, rng);
        let texture_freq = rng.range(5.0, 12.0) / s;
        let texture = Field::new(rng.noise(), texture_freq, texture_freq, 3, (w, h), false);
        let texture_depth = rng.range(0.25, 0.6);
        let attenuation = rng.range(0.2, 1.1);
        let focal_gain = rng.range(0.0, 0.35);
        let focal_depth = rng.range(0.3, 0.7);
        let dynamic_range = rng.range(45.0, 60.0);
        let floor_db = -dynamic_range * rng.range(0.56, 0.68);

        let vessel = place_vessel(&fan, s, rng);
        let outline = Outline::pick(rng);
        let mean_r = (s * rng.log_range(0.035, 0.2)).max(2.2);
        let mut lesions = Vec::new();
        let first =
            place_lesion(&fan, s, outline, mean_r, &[], &vessel, rng).unwrap_or_else(|| {
                // No room away from the vessel: the middle of the fan, as large as fits.
                let (cx, cy) = fan.point(0.5, 0.0);
                let r = (fan.margin(cx, cy) / 2.0).min(mean_r).max(1.0);
                lesion_at(&fan, outline, cx, cy, r, rng)
            });
        lesions.push(first);
        if rng.chance(0.25) {
            let b = &lesions[0].blob;
            let avoid = [(b.cx, b.cy, b.reach)];
            let r = mean_r * rng.range(0.6, 1.0);
            if let Some(second) = place_lesion(&fan, s, outline, r, &avoid, &vessel, rng) {
                lesions.push(second);
            }
        }

        // Fully developed speckle: the magnitude of two correlated Gaussian fields (Rayleigh
        // distributed), its grain longer across the beam than along it.
        // Some frames are compounded (two patterns averaged), which smooths the speckle.
        let sigma_x = (s / 200.0).max(0.6) * rng.range(0.8, 1.5);
        let sigma_y = (sigma_x * rng.range(0.35, 0.55)).max(0.4);
        let patterns = if rng.chance(0.6) { 2 } else { 1 };
        let speckle: Vec<Vec<f32>> = (0..2 * patterns)
            .map(|_| gaussian_field(w, h, sigma_x, sigma_y, rng.noise()))
            .collect();
        let (wu, n) = (w as usize, w as usize * h as usize);
        let mut gray = vec![0u8; n];
        let mut lesion_bits = vec![false; n];
        let mut vessel_bits = vec![false; n];
        let y_top = fan.ay + fan.r0;
        let y_span = (fan.ay + fan.r1 - y_top).max(1.0);
        let mut tex_row = vec![0f32; w as usize];
        for y in 0..h {
            texture.row(y, &mut tex_row);
            for x in 0..w {
                let (px, py) = centre(x, y);
                if !fan.contains(px, py) {
                    continue;
                }
                let i = y as usize * wu + x as usize;
                let (dx, dy) = (px - fan.cx, py - fan.ay);
                let r = (dx * dx + dy * dy).sqrt();
                let depth = (r - fan.r0) / span;
                let t = (py - y_top) / y_span;
                let tex = tex_row[x as usize];
                let mut e = layers.echo(x as usize, t)
                    * (1.0 + texture_depth * ((tex - 0.5) * 5.0).clamp(-1.0, 1.0));

                let mut in_lesion = false;
                for les in &lesions {
                    let rho = les.blob.rho(px, py);
                    in_lesion |= rho <= 1.0;
                    let inside = 1.0 - smoothstep(1.0 - les.edge, 1.0 + les.edge, rho);
                    e *= 1.0 - les.contrast * inside;
                    if les.halo > 0.0 {
                        let z = (rho - 1.0 - les.edge) / (les.edge + 0.05);
                        e += les.halo * exp(-z * z) * 0.5;
                    }
                    if les.posterior != 0.0 && rho > 1.0 {
                        let along = dx * les.ux + dy * les.uy - les.along;
                        let off = (dx * les.uy - dy * les.ux).abs();
                        if along > 0.0 && off < les.column * 1.3 {
                            let ramp = smoothstep(0.0, les.blob.reach, along);
                            let side = 1.0 - smoothstep(les.column * 0.6, les.column * 1.3, off);
                            e *= 1.0 + les.posterior * ramp * side;
                        }
                    }
                }

                let (dv, rv) = vessel.dist(px, py);
                let in_vessel = dv <= rv;
                if dv < rv + vessel.wall + 2.0 {
                    let lumen = 1.0 - smoothstep(rv, rv + 1.0, dv);
                    e = e * (1.0 - lumen) + vessel.lumen * (0.5 + tex) * lumen;
                    let wall = smoothstep(rv + 0.2, rv + 0.2 + 0.3 * vessel.wall, dv)
                        * (1.0 - smoothstep(rv + 0.7 * vessel.wall, rv + vessel.wall + 0.7, dv));
                    e += vessel.wall_gain * wall * 0.5;
                }

                let zf = (depth - focal_depth) / 0.18;
                let gain = exp(-attenuation * depth) * (1.0 + focal_gain * exp(-zf * zf));
                let lateral = dx.abs() / (dy * fan.tan_half);
                let edge_falloff = 1.0 - 0.4 * smoothstep(0.8, 1.0, lateral);
                let near = 1.5 * exp(-depth * depth / 0.0009);
                e = e * gain * edge_falloff + near;

                let power: f32 = speckle.iter().map(|f| f[i] * f[i]).sum();
                let amp = (power / patterns as f32).sqrt();
                let db = (20.0 / std::f32::consts::LN_10) * ln(e * amp);
                gray[i] = (((db - floor_db) / dynamic_range).clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
                vessel_bits[i] = in_vessel;
                lesion_bits[i] = in_lesion && !in_vessel;
            }
        }

        let count = if lesions.len() == 2 { "two" } else { "one" };
        let structures = vec![
            structure("lesion", outline.name(), "dark", count, w, h, lesion_bits)?,
            structure("vessel", "elongated", "black", "one", w, h, vessel_bits)?,
        ];
        let frame = Frame::from_gray(w, h, &gray)?;
        Ok((
            Phantom {
                modality: Modality::Ultrasound,
                frame,
                structures,
            },
            fan,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Endoscopy

mod endoscopy {
    use super::*;

    /// The lit field of view: a circle, or a rectangle with cut corners.
    pub(super) enum Fov {
        Circle {
            cx: f32,
            cy: f32,
            r: f32,
        },
        Octagon {
            cx: f32,
            cy: f32,
            a: f32,
            b: f32,
            c: f32,
        },
    }

    impl Fov {
        fn new(w: u32, h: u32, rng: &mut Rng) -> Fov {
            let (wf, hf) = (w as f32, h as f32);
            let (cx, cy) = (0.5 * wf, 0.5 * hf);
            if rng.chance(0.5) {
                let r = 0.5 * wf.min(hf) * rng.range(0.9, 1.1);
                Fov::Circle { cx, cy, r }
            } else {
                let a = (0.49 * wf).min(0.62 * hf);
                let b = (0.49 * hf).min(0.62 * wf);
                let c = (a + b) * rng.range(0.72, 0.85);
                Fov::Octagon { cx, cy, a, b, c }
            }
        }

        /// Signed distance in pixels: positive inside the field of view.
        pub fn inside(&self, x: f32, y: f32) -> f32 {
            match *self {
                Fov::Circle { cx, cy, r } => r - ((x - cx) * (x - cx) + (y - cy) * (y - cy)).sqrt(),
                Fov::Octagon { cx, cy, a, b, c } => {
                    let (dx, dy) = ((x - cx).abs(), (y - cy).abs());
                    (a - dx)
                        .min(b - dy)
                        .min((c - dx - dy) * std::f32::consts::FRAC_1_SQRT_2)
                }
            }
        }

        fn centre_and_radius(&self) -> (f32, f32, f32) {
            match *self {
                Fov::Circle { cx, cy, r } => (cx, cy, r),
                Fov::Octagon { cx, cy, a, b, .. } => (cx, cy, a.max(b)),
            }
        }
    }

    /// A raised polyp: a shaded dome over a blob outline.
    struct Polyp {
        blob: Blob,
        outline: Outline,
        color: [f32; 3],
        red: bool,
        edge: f32,
        light: [f32; 3],
        texture: Field,
    }

    /// A metallic instrument: a tapered shaft from outside the view to a tip inside it.
    struct Tool {
        tx: f32,
        ty: f32,
        /// Unit axis from the tip outwards.
        ax: f32,
        ay: f32,
        w_tip: f32,
        w_base: f32,
        taper: f32,
        /// Jaw length and opening (tangent of the half angle); `None` for a rounded tip.
        jaw: Option<(f32, f32)>,
        grey: f32,
        stripe_at: f32,
        stripe_w: f32,
        stripe_gain: f32,
        ring: Option<(f32, f32)>,
    }

    impl Tool {
        /// For a point on the tool: the position across it (-1 to 1, for the specular stripe),
        /// the curvature term for shading (0 at the rim, 1 on the axis) and the distance from
        /// the tip along the axis.
        fn sample(&self, x: f32, y: f32) -> Option<(f32, f32, f32)> {
            let (dx, dy) = (x - self.tx, y - self.ty);
            let t = dx * self.ax + dy * self.ay;
            let q = -dx * self.ay + dy * self.ax;
            if t >= 0.0 {
                let wt = self.w_tip + (self.w_base - self.w_tip) * (t / self.taper).min(1.0);
                if q.abs() > wt {
                    return None;
                }
                let tau = q / wt;
                return Some((tau, (1.0 - tau * tau).sqrt(), t));
            }
            match self.jaw {
                None => {
                    let r2 = t * t + q * q;
                    let w2 = self.w_tip * self.w_tip;
                    (r2 <= w2).then(|| (q / self.w_tip, (1.0 - r2 / w2).sqrt(), t))
                }
                Some((len, open)) => {
                    let s = -t;
                    if s > len {
                        return None;
                    }
                    let prong = 0.5 * self.w_tip * (1.0 - 0.45 * s / len);
                    let mid = 0.5 * self.w_tip + s * open;
                    let off = q.abs() - mid;
                    if off.abs() > prong {
                        // Rounded prong ends.
                        return None;
                    }
                    let end = (s - (len - prong)).max(0.0);
                    let r2 = (off * off + end * end) / (prong * prong);
                    (r2 <= 1.0).then(|| (off / prong * q.signum(), (1.0 - r2).sqrt(), t))
                }
            }
        }

        /// Distance outside the shaft's side, for a soft shadow on the tissue.
        fn shadow(&self, x: f32, y: f32) -> f32 {
            let (dx, dy) = (x - self.tx, y - self.ty);
            let t = dx * self.ax + dy * self.ay;
            if t < -self.w_tip {
                return f32::MAX;
            }
            let q = -dx * self.ay + dy * self.ax;
            let wt = self.w_tip + (self.w_base - self.w_tip) * (t.max(0.0) / self.taper).min(1.0);
            q.abs() - wt
        }

        fn shade(&self, tau: f32, bulge: f32, t: f32) -> [f32; 3] {
            let z = (tau - self.stripe_at) / self.stripe_w;
            let stripe = self.stripe_gain * exp(-z * z);
            let near = 0.8 + 0.2 * (t / self.taper).clamp(0.0, 1.0);
            let mut v = self.grey * (0.3 + 0.7 * bulge) * near;
            if let Some((at, width)) = self.ring {
                if t > at && t < at + width {
                    v *= 0.35;
                }
            }
            let base = [v * 0.97, v * 0.99, v * 1.03];
            base.map(|c| c + stripe)
        }
    }

    /// Ratio of green and blue to red below which a colour reads as red rather than pink.
    pub(super) const RED_RATIO: f32 = 0.48;

    /// (G + B) / 2R of a colour.
    pub(super) fn pinkness(c: [f32; 3]) -> f32 {
        (c[1] + c[2]) / (2.0 * c[0].max(1e-3))
    }

    fn place_polyp(
        fov: &Fov,
        size: (u32, u32),
        mucosa: [f32; 3],
        mucosa_red: bool,
        rng: &mut Rng,
    ) -> Polyp {
        let (w, h) = (size.0 as f32, size.1 as f32);
        let s = w.min(h);
        let outline = Outline::pick(rng);
        let mut r = (s * rng.log_range(0.045, 0.2)).max(2.5);
        let (fcx, fcy, _) = fov.centre_and_radius();
        let mut at = (fcx, fcy);
        'search: for round in 0..5 {
            for _ in 0..12 {
                let p = (rng.range(0.0, w), rng.range(0.0, h));
                if fov.inside(p.0, p.1) > outline.reach(r) + 1.0 {
                    at = p;
                    break 'search;
                }
            }
            if round < 4 {
                r *= 0.85;
            }
        }
        let blob = Blob::new(outline, at.0, at.1, r, rng);
        // Mostly the other hue than the mucosa; partly blended with it so that it does not
        // look pasted on.
        let palette = if rng.chance(0.65) != mucosa_red {
            [
                rng.range(0.7, 0.85),
                rng.range(0.2, 0.3),
                rng.range(0.2, 0.28),
            ]
        } else {
            [
                rng.range(0.9, 0.98),
                rng.range(0.58, 0.7),
                rng.range(0.56, 0.68),
            ]
        };
        let blend = rng.range(0.1, 0.4);
        let color = [0, 1, 2].map(|k| lerp(palette[k], mucosa[k], blend));
        let red = pinkness(color) < RED_RATIO;
        let texture_freq = rng.range(0.15, 0.35) / (r / 8.0).max(1.0);
        let beta = -0.5 * PI + rng.range(-1.0, 1.0);
        let (lx, ly, lz) = (0.7 * cos(beta), 0.7 * sin(beta), 1.0);
        let norm = (lx * lx + ly * ly + lz * lz).sqrt();
        Polyp {
            outline,
            color,
            red,
            edge: (1.2 / r).max(0.04),
            light: [lx / norm, ly / norm, lz / norm],
            texture: Field::new(rng.noise(), texture_freq, texture_freq, 2, size, false),
            blob,
        }
    }

    fn place_tool(fov: &Fov, s: f32, polyp: &Polyp, rng: &mut Rng) -> Tool {
        let (fcx, fcy, fr) = fov.centre_and_radius();
        let mut best: Option<(f32, Tool)> = None;
        for _ in 0..12 {
            let w_base = s * rng.log_range(0.025, 0.11);
            let w_tip = (w_base * rng.range(0.45, 0.75)).max(1.5);
            let alpha = rng.range(0.0, 2.0 * PI);
            let (ex, ey) = (cos(alpha), sin(alpha));
            // Deep enough into the view to read as a long instrument.
            let reach = rng.range(-0.25, (1.0 - 6.0 * w_base / fr).clamp(-0.2, 0.7)) * fr;
            let (tx, ty) = (fcx + ex * reach, fcy + ey * reach);
            let delta = alpha + rng.range(-0.45, 0.45);
            let jaw = rng
                .chance(0.5)
                .then(|| (w_tip * rng.range(1.5, 2.6), rng.range(0.0, 0.5)));
            let ring = rng.chance(0.5).then(|| {
                (
                    w_tip * rng.range(0.5, 2.0),
                    (w_tip * rng.range(0.15, 0.35)).max(1.0),
                )
            });
            let tool = Tool {
                tx,
                ty,
                ax: cos(delta),
                ay: sin(delta),
                w_tip,
                w_base,
                taper: fr,
                jaw,
                grey: rng.range(0.45, 0.68),
                stripe_at: rng.range(-0.5, 0.5),
                stripe_w: rng.range(0.1, 0.22),
                stripe_gain: rng.range(0.35, 0.7),
                ring,
            };
            let visible = visible_fraction(&polyp.blob, &tool);
            if visible >= 0.6 {
                return tool;
            }
            if best.as_ref().is_none_or(|(v, _)| visible > *v) {
                best = Some((visible, tool));
            }
        }
        match best {
            Some((_, tool)) => tool,
            None => unreachable_tool(fcx, fcy, s),
        }
    }

    /// Never used in practice (the search above always yields a candidate); keeps the code
    /// free of panics.
    fn unreachable_tool(tx: f32, ty: f32, s: f32) -> Tool {
        Tool {
            tx,
            ty,
            ax: 1.0,
            ay: 0.0,
            w_tip: 0.04 * s,
            w_base: 0.08 * s,
            taper: s,
            jaw: None,
            grey: 0.6,
            stripe_at: 0.0,
            stripe_w: 0.2,
            stripe_gain: 0.5,
            ring: None,
        }
    }

    /// Fraction of sample points inside the blob that the tool leaves uncovered.
    fn visible_fraction(blob: &Blob, tool: &Tool) -> f32 {
        let (mut inside, mut seen) = (0, 0);
        for j in 0..9 {
            for i in 0..9 {
                let x = blob.cx + (i as f32 - 4.0) / 4.0 * blob.reach;
                let y = blob.cy + (j as f32 - 4.0) / 4.0 * blob.reach;
                if blob.rho(x, y) <= 1.0 {
                    inside += 1;
                    if tool.sample(x, y).is_none() {
                        seen += 1;
                    }
                }
            }
        }
        if inside == 0 {
            return 0.0;
        }
        seen as f32 / inside as f32
    }

    struct Highlight {
        x: f32,
        y: f32,
        rx: f32,
        ry: f32,
        strength: f32,
    }

    /// Draws an endoscopy phantom; also returns its field of view (for tests).
    pub(super) fn render(w: u32, h: u32, rng: &mut Rng) -> Result<(Phantom, Fov), FrameError> {
        let (wf, hf) = (w as f32, h as f32);
        let s = wf.min(hf);
        let fov = Fov::new(w, h, rng);
        let (fcx, fcy, fr) = fov.centre_and_radius();

        // Mucosa.
        let mucosa_red = rng.chance(0.4);
        let (col_a, col_b) = if mucosa_red {
            (
                [
                    rng.range(0.75, 0.88),
                    rng.range(0.3, 0.4),
                    rng.range(0.25, 0.33),
                ],
                [
                    rng.range(0.8, 0.92),
                    rng.range(0.38, 0.48),
                    rng.range(0.3, 0.4),
                ],
            )
        } else {
            (
                [
                    rng.range(0.86, 0.95),
                    rng.range(0.48, 0.58),
                    rng.range(0.42, 0.52),
                ],
                [
                    rng.range(0.82, 0.92),
                    rng.range(0.4, 0.5),
                    rng.range(0.3, 0.42),
                ],
            )
        };
        let colour_freq = rng.range(2.0, 4.0) / s;
        let colour_noise = Field::new(rng.noise(), colour_freq, colour_freq, 2, (w, h), false);
        let lumen = (
            fcx + rng.range(-0.6, 0.6) * fr,
            fcy + rng.range(-0.6, 0.6) * fr,
        );
        let lumen_sigma = s * rng.range(0.15, 0.35);
        let lumen_depth = if rng.chance(0.75) {
            rng.range(0.5, 0.92)
        } else {
            rng.range(0.0, 0.3)
        };
        let fold_lambda = s * rng.range(0.08, 0.16);
        let fold_strength = if rng.chance(0.7) {
            rng.range(0.1, 0.35)
        } else {
            0.0
        };
        let fold_warp = Field::new(rng.noise(), 3.0 / s, 3.0 / s, 2, (w, h), false);
        let fold_mod = Field::new(rng.noise(), 2.5 / s, 2.5 / s, 1, (w, h), false);
        let vessel_freq = rng.range(3.0, 6.0) / s;
        let vessels = Field::new(rng.noise(), vessel_freq, vessel_freq, 2, (w, h), false);
        let fine_vessels = Field::new(
            rng.noise(),
            vessel_freq * 2.3,
            vessel_freq * 2.3,
            2,
            (w, h),
            false,
        );
        let vessel_width = rng.range(0.012, 0.025) * (128.0 / s).clamp(0.5, 2.0);
        let vessel_vis = rng.range(0.2, 0.7);
        let grain_freq = rng.range(0.25, 0.5);
        let grain = Field::new(rng.noise(), grain_freq, grain_freq, 1, (w, h), false);
        let noise_level = rng.range(0.005, 0.03);
        let exposure = rng.range(0.9, 1.1);
        let vignette = rng.range(0.2, 0.5);
        let sensor = rng.noise();

        let mucosa = [0, 1, 2].map(|k| 0.5 * (col_a[k] + col_b[k]));
        let polyp = place_polyp(&fov, (w, h), mucosa, mucosa_red, rng);
        let tool = place_tool(&fov, s, &polyp, rng);

        let mut highlights = Vec::new();
        let n_spots = 2 + (rng.unit() * 10.0) as usize;
        for _ in 0..n_spots {
            let r = (s * rng.range(0.004, 0.018)).max(0.6);
            let aspect = rng.range(0.5, 2.0);
            let (x, y) = (
                fcx + rng.range(-1.0, 1.0) * fr,
                fcy + rng.range(-1.0, 1.0) * fr,
            );
            highlights.push(Highlight {
                x,
                y,
                rx: r * aspect,
                ry: r / aspect,
                strength: rng.range(0.6, 1.5),
            });
        }
        if rng.chance(0.75) {
            let b = &polyp.blob;
            let d = 0.45 * b.reach;
            let r = (b.reach * rng.range(0.06, 0.14)).max(0.8);
            highlights.push(Highlight {
                x: b.cx + polyp.light[0] * d / 0.6,
                y: b.cy + polyp.light[1] * d / 0.6,
                rx: r * 1.4,
                ry: r,
                strength: rng.range(1.0, 2.0),
            });
        }

        let n = w as usize * h as usize;
        let mut rgb = vec![0u8; n * 3];
        let mut polyp_bits = vec![false; n];
        let mut tool_bits = vec![false; n];
        let fields = [
            &colour_noise,
            &fold_warp,
            &fold_mod,
            &vessels,
            &fine_vessels,
            &grain,
            &polyp.texture,
        ];
        let mut rows = vec![vec![0f32; w as usize]; fields.len()];
        for y in 0..h {
            for (field, row) in fields.iter().zip(&mut rows) {
                field.row(y, row);
            }
            for x in 0..w {
                let (px, py) = centre(x, y);
                let inside = fov.inside(px, py);
                if inside <= 0.0 {
                    continue;
                }
                let i = y as usize * w as usize + x as usize;

                // Mucosa colour, lumen darkness and folds.
                let xu = x as usize;
                let mix = smoothstep(0.3, 0.7, rows[0][xu]);
                let mut col = [0usize, 1, 2].map(|k| lerp(col_a[k], col_b[k], mix));
                let (lx, ly) = (px - lumen.0, py - lumen.1);
                let ld2 = lx * lx + ly * ly;
                let illum = 1.0 - lumen_depth * exp(-ld2 / (2.0 * lumen_sigma * lumen_sigma));
                let mut folds = 1.0;
                if fold_strength > 0.0 {
                    let warp = rows[1][xu] - 0.5;
                    let f = ld2.sqrt() / fold_lambda + 3.0 * warp;
                    let crest = 0.5 + 0.5 * cos(2.0 * PI * f);
                    let behind = 0.5 + 0.5 * cos(2.0 * PI * (f - 0.22));
                    let (c2, b2) = (crest * crest, behind * behind);
                    let strength = fold_strength * smoothstep(0.25, 0.65, rows[2][xu]);
                    folds = 1.0 + strength * (c2 * c2 - 0.8 * b2 * b2 * b2);
                }
                let vn = rows[3][xu];
                let vessel = (1.0 - smoothstep(0.0, vessel_width, (vn - 0.5).abs())) * vessel_vis;
                let vn2 = rows[4][xu];
                let fine = (1.0 - smoothstep(0.0, vessel_width * 0.7, (vn2 - 0.5).abs()))
                    * vessel_vis
                    * 0.6;
                let vein = vessel.max(fine);
                let darken = [1.0 - 0.2 * vein, 1.0 - 0.5 * vein, 1.0 - 0.3 * vein];
                let g = 1.0 + 0.08 * (rows[5][xu] - 0.5);
                col = [0, 1, 2].map(|k| col[k] * darken[k] * illum * folds * g);

                // Polyp: a dome lit from near the camera, with the same fine texture.
                let (u, v, rho) = if polyp.blob.rho(px, py) < 5.0 {
                    polyp.blob.local(px, py)
                } else {
                    (0.0, 0.0, 10.0)
                };
                let in_polyp = rho <= 1.0;
                if rho < 1.0 + polyp.edge {
                    let alpha = 1.0 - smoothstep(1.0 - polyp.edge, 1.0 + polyp.edge, rho);
                    let hgt = (1.0 - (rho * rho).min(1.0)).sqrt();
                    let l = polyp.light;
                    let diffuse = (u * l[0] + v * l[1] + hgt * l[2]).max(0.0);
                    let tex = 1.0 + 0.12 * (rows[6][xu] - 0.5);
                    let rim = 0.55 + 0.45 * hgt.sqrt();
                    let shade = (0.3 + 0.85 * diffuse) * rim * tex * g * (0.5 + 0.5 * illum);
                    let pc =
                        [0, 1, 2].map(|k| polyp.color[k] * shade * (1.0 - 0.5 * (1.0 - darken[k])));
                    col = [0, 1, 2].map(|k| lerp(col[k], pc[k], alpha));
                } else if rho < 1.3 {
                    // A soft shadow on the side away from the light.
                    let away = -(u * polyp.light[0] + v * polyp.light[1]) / rho;
                    let dark = 0.35 * (1.0 - smoothstep(1.0, 1.3, rho)) * away.max(0.0);
                    col = col.map(|c| c * (1.0 - dark));
                }

                // Tool.
                let mut in_tool = false;
                if let Some((tau, bulge, t)) = tool.sample(px, py) {
                    in_tool = true;
                    col = tool.shade(tau, bulge, t);
                } else {
                    let d = tool.shadow(px, py);
                    if d < 0.06 * s {
                        col = col.map(|c| c * (0.55 + 0.45 * smoothstep(0.0, 0.06 * s, d)));
                    }
                }

                // Highlights, vignetting, sensor noise, the soft rim of the field of view.
                for hl in &highlights {
                    let (dx, dy) = ((px - hl.x) / hl.rx, (py - hl.y) / hl.ry);
                    let d2 = dx * dx + dy * dy;
                    if d2 < 9.0 {
                        let a = (hl.strength * 1.6 * exp(-d2)).min(1.0);
                        col = col.map(|c| lerp(c, 1.05, a));
                    }
                }
                let (vx, vy) = ((px - fcx) / fr, (py - fcy) / fr);
                let vig = (1.0 - vignette * (vx * vx + vy * vy)).max(0.2);
                let rim = smoothstep(0.0, 1.5, inside);
                let noise = noise_level * (sensor.white(x, y) - 0.5) * 2.0;
                for (k, c) in col.iter().enumerate() {
                    let val = ((c * exposure * vig + noise) * rim).clamp(0.0, 1.0);
                    rgb[i * 3 + k] = (val * 255.0 + 0.5) as u8;
                }
                tool_bits[i] = in_tool;
                polyp_bits[i] = in_polyp && !in_tool;
            }
        }

        let colour = if polyp.red { "red" } else { "pink" };
        let shape = polyp.outline.name();
        let structures = vec![
            structure("polyp", shape, colour, "one", w, h, polyp_bits)?,
            structure("tool", "elongated", "grey", "one", w, h, tool_bits)?,
        ];
        let frame = Frame::from_rgb(w, h, rgb)?;
        Ok((
            Phantom {
                modality: Modality::Endoscopy,
                frame,
                structures,
            },
            fov,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes the generator must handle: tiny, square, landscape, portrait and lopsided.
    const SIZES: [(u32, u32); 6] = [
        (32, 32),
        (64, 64),
        (128, 96),
        (96, 160),
        (640, 480),
        (300, 40),
    ];

    /// Seeds to try at a size: fewer for big frames, to keep debug test runs short.
    fn seeds(w: u32, h: u32, most: u64) -> std::ops::Range<u64> {
        0..(most * 8192 / u64::from(w * h)).clamp(2, most)
    }

    fn both() -> [Modality; 2] {
        [Modality::Ultrasound, Modality::Endoscopy]
    }

    fn centroid_px(mask: &Mask) -> (f64, f64) {
        let (fx, fy) = centroid(mask).expect("mask has pixels");
        (fx * f64::from(mask.width()), fy * f64::from(mask.height()))
    }

    /// Ratio of the larger to the smaller standard deviation along the mask's principal axes.
    fn elongation(mask: &Mask) -> f64 {
        let (cx, cy) = centroid_px(mask);
        let w = mask.width() as usize;
        let (mut sxx, mut syy, mut sxy, mut n) = (0.0, 0.0, 0.0, 0.0);
        for (i, _) in mask.bits().iter().enumerate().filter(|(_, &b)| b) {
            let (dx, dy) = ((i % w) as f64 + 0.5 - cx, (i / w) as f64 + 0.5 - cy);
            sxx += dx * dx;
            syy += dy * dy;
            sxy += dx * dy;
            n += 1.0;
        }
        let (a, b, c) = (sxx / n, syy / n, sxy / n);
        let root = ((a - b) * (a - b) / 4.0 + c * c).sqrt();
        let (big, small) = ((a + b) / 2.0 + root, (a + b) / 2.0 - root);
        (big / small.max(1e-9)).sqrt()
    }

    /// Square dilation of a mask by `r` pixels.
    fn dilate(bits: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
        let mut rows = vec![false; bits.len()];
        for y in 0..h {
            for x in 0..w {
                let (lo, hi) = (x.saturating_sub(r), (x + r).min(w - 1));
                rows[y * w + x] = (lo..=hi).any(|xx| bits[y * w + xx]);
            }
        }
        let mut out = vec![false; bits.len()];
        for y in 0..h {
            for x in 0..w {
                let (lo, hi) = (y.saturating_sub(r), (y + r).min(h - 1));
                out[y * w + x] = (lo..=hi).any(|yy| rows[yy * w + x]);
            }
        }
        out
    }

    fn gray(frame: &Frame, i: usize) -> f64 {
        f64::from(frame.rgb()[3 * i])
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        for m in both() {
            let a = generate(m, 96, 80, 7).unwrap();
            let b = generate(m, 96, 80, 7).unwrap();
            assert_eq!(a, b, "{m}");
            let c = generate(m, 96, 80, 8).unwrap();
            assert_ne!(a.frame.rgb(), c.frame.rgb(), "{m}");
        }
    }

    #[test]
    fn output_is_pinned_across_platforms() {
        // A checksum of the bytes of one phantom per modality; it changes only when the
        // drawing code does (then update it deliberately).
        let digest = |p: &Phantom| {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            let bytes = p.frame.rgb().iter().copied();
            let masks = p
                .structures
                .iter()
                .flat_map(|s| s.mask.bits().iter().map(|&b| b as u8));
            for b in bytes.chain(masks) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            h
        };
        let us = digest(&generate(Modality::Ultrasound, 64, 48, 1).unwrap());
        let endo = digest(&generate(Modality::Endoscopy, 64, 48, 1).unwrap());
        assert_eq!(
            (us, endo),
            (0x702f_a122_45cf_95a6, 0x33b6_7987_e76e_98e1),
            "update the pinned digests: {us:#x} {endo:#x}"
        );
    }

    #[test]
    fn every_phantom_has_two_visible_structures() {
        for (w, h) in SIZES {
            for m in both() {
                for seed in seeds(w, h, 12) {
                    let p = generate(m, w, h, seed).unwrap();
                    assert_eq!((p.frame.width(), p.frame.height()), (w, h));
                    assert!(p.structures.len() >= 2, "{m} {w}x{h} seed {seed}");
                    for s in &p.structures {
                        assert_eq!((s.mask.width(), s.mask.height()), (w, h));
                        assert!(
                            s.mask.area() > 0,
                            "{m} {w}x{h} seed {seed}: {:?}",
                            s.attributes
                        );
                    }
                    let classes: Vec<_> = p
                        .structures
                        .iter()
                        .map(|s| s.attributes.class.clone().unwrap())
                        .collect();
                    let want = match m {
                        Modality::Ultrasound => ["lesion", "vessel"],
                        Modality::Endoscopy => ["polyp", "tool"],
                    };
                    assert_eq!(classes, want);
                }
            }
        }
    }

    #[test]
    fn ultrasound_is_black_outside_the_fan_and_structures_lie_inside() {
        for (w, h) in SIZES {
            for seed in seeds(w, h, 8) {
                let mut rng = Rng::new(seed);
                let (p, fan) = ultrasound::render(w, h, &mut rng).unwrap();
                let mut lit = 0;
                for y in 0..h {
                    for x in 0..w {
                        let (px, py) = centre(x, y);
                        let i = (y * w + x) as usize;
                        if fan.contains(px, py) {
                            lit += usize::from(p.frame.rgb()[3 * i] > 0);
                        } else {
                            assert_eq!(
                                p.frame.pixel(x, y),
                                [0, 0, 0],
                                "{w}x{h} seed {seed} ({x},{y})"
                            );
                            assert!(p.structures.iter().all(|s| !s.mask.get(x, y)));
                        }
                    }
                }
                assert!(
                    lit as f64 > 0.05 * f64::from(w * h),
                    "{w}x{h} seed {seed}: fan too small"
                );
            }
        }
    }

    #[test]
    fn endoscopy_border_is_black_and_mucosa_reddish() {
        for (w, h) in SIZES {
            for seed in seeds(w, h, 8) {
                let mut rng = Rng::new(seed);
                let (p, fov) = endoscopy::render(w, h, &mut rng).unwrap();
                for (x, y) in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
                    assert_eq!(p.frame.pixel(x, y), [0, 0, 0], "{w}x{h} seed {seed} corner");
                }
                let mut sum = [0f64; 3];
                let mut n = 0.0;
                for y in 0..h {
                    for x in 0..w {
                        let (px, py) = centre(x, y);
                        let rgb = p.frame.pixel(x, y);
                        if fov.inside(px, py) <= 0.0 {
                            assert_eq!(rgb, [0, 0, 0], "{w}x{h} seed {seed} ({x},{y})");
                            assert!(p.structures.iter().all(|s| !s.mask.get(x, y)));
                        } else if p.structures.iter().all(|s| !s.mask.get(x, y)) {
                            for (acc, &c) in sum.iter_mut().zip(&rgb) {
                                *acc += f64::from(c);
                            }
                            n += 1.0;
                        }
                    }
                }
                let mean = sum.map(|v| v / n);
                assert!(
                    mean[0] > mean[1] && mean[0] > mean[2],
                    "{w}x{h} seed {seed}: {mean:?}"
                );
            }
        }
    }

    #[test]
    fn attributes_agree_with_masks() {
        for (w, h) in SIZES {
            for m in both() {
                for seed in seeds(w, h, 10) {
                    let p = generate(m, w, h, seed).unwrap();
                    for s in &p.structures {
                        let a = &s.attributes;
                        let (fx, fy) = centroid(&s.mask).unwrap();
                        assert_eq!(a.location.as_deref(), Some(location_word(fx, fy)));
                        let fraction = s.mask.area() as f64 / f64::from(w * h);
                        assert_eq!(a.size.as_deref(), Some(size_word(fraction)));
                        let def = a.definition.as_deref().unwrap();
                        assert!(!def.contains(',') && def.split(' ').count() <= 14, "{def}");
                        let class = a.class.as_deref().unwrap();
                        let shape = a.shape.as_deref().unwrap();
                        let color = a.color.as_deref().unwrap();
                        let expected_color = match class {
                            "lesion" => "dark",
                            "vessel" => "black",
                            "tool" => "grey",
                            _ => color,
                        };
                        assert_eq!(color, expected_color);
                        // Shapes from masks big enough to measure and seen whole.
                        let whole = a.count.as_deref() == Some("one") && class != "polyp";
                        if s.mask.area() >= 40 && whole {
                            let e = elongation(&s.mask);
                            match shape {
                                "round" => {
                                    assert!(e < 1.35, "{m} {w}x{h} {seed} {class} round {e}")
                                }
                                "oval" => assert!((1.25..2.8).contains(&e), "{class} oval {e}"),
                                "elongated" => assert!(e > 1.8, "{m} {w}x{h} {seed} {class} {e}"),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn polyp_colour_word_follows_its_hue() {
        // The median (G + B) / 2R over the polyp's pixels, robust to highlights and the
        // blended rim: red polyps stay well below pink ones.
        for seed in 0..40 {
            let p = generate(Modality::Endoscopy, 64, 64, seed).unwrap();
            let polyp = &p.structures[0];
            let mut ratios: Vec<f64> = (0..64 * 64)
                .filter(|&i| polyp.mask.bits()[i])
                .map(|i| {
                    let c = &p.frame.rgb()[3 * i..3 * i + 3];
                    (f64::from(c[1]) + f64::from(c[2])) / (2.0 * f64::from(c[0].max(1)))
                })
                .collect();
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            match polyp.attributes.color.as_deref() {
                Some("red") => assert!(median < 0.5, "seed {seed}: red polyp ratio {median}"),
                Some("pink") => assert!(median > 0.52, "seed {seed}: pink polyp ratio {median}"),
                other => panic!("polyp colour {other:?}"),
            }
        }
    }

    #[test]
    fn lesions_are_darker_than_the_tissue_around_them() {
        for (w, h) in [(64, 64), (128, 128), (320, 240)] {
            for seed in seeds(w, h, 16) {
                let p = generate(Modality::Ultrasound, w, h, seed).unwrap();
                let (wu, hu) = (w as usize, h as usize);
                let lesion = p.structures[0].mask.bits();
                let any: Vec<bool> = (0..wu * hu)
                    .map(|i| p.structures.iter().any(|s| s.mask.bits()[i]))
                    .collect();
                let r = (0.03 * f64::from(w.min(h))).max(2.0) as usize;
                let near = dilate(lesion, wu, hu, r + 1);
                let touching = dilate(lesion, wu, hu, 1);
                let mean = |keep: &dyn Fn(usize) -> bool| {
                    let v: Vec<f64> = (0..wu * hu)
                        .filter(|&i| keep(i))
                        .map(|i| gray(&p.frame, i))
                        .collect();
                    v.iter().sum::<f64>() / v.len().max(1) as f64
                };
                let inside = mean(&|i| lesion[i]);
                let ring =
                    mean(&|i| near[i] && !touching[i] && !any[i] && p.frame.rgb()[3 * i] > 0);
                assert!(
                    inside < 0.8 * ring,
                    "{w}x{h} seed {seed}: lesion {inside:.1}, around {ring:.1}"
                );
            }
        }
    }

    #[test]
    fn vessels_are_much_darker_than_tissue() {
        for seed in 0..16 {
            let mut rng = Rng::new(seed);
            let (p, fan) = ultrasound::render(128, 128, &mut rng).unwrap();
            let (mut vessel, mut nv, mut tissue, mut nt) = (0.0, 0.0, 0.0, 0.0);
            for y in 0..128 {
                for x in 0..128 {
                    let i = (y * 128 + x) as usize;
                    let (px, py) = centre(x, y);
                    if p.structures[1].mask.get(x, y) {
                        vessel += gray(&p.frame, i);
                        nv += 1.0;
                    } else if fan.contains(px, py) && !p.structures[0].mask.get(x, y) {
                        tissue += gray(&p.frame, i);
                        nt += 1.0;
                    }
                }
            }
            let (vessel, tissue) = (vessel / nv, tissue / nt);
            assert!(
                vessel < 0.4 * tissue,
                "seed {seed}: vessel {vessel:.1}, tissue {tissue:.1}"
            );
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        for (w, h) in [
            (0, 0),
            (31, 64),
            (64, 31),
            (MAX_SIDE + 1, 64),
            (64, u32::MAX),
            (8192, 8192),
        ] {
            for m in both() {
                match generate(m, w, h, 1) {
                    Err(PhantomError::BadSize { width, height }) => {
                        assert_eq!((width, height), (w, h))
                    }
                    other => panic!("{w}x{h}: expected BadSize, got {other:?}"),
                }
            }
            let dir = std::env::temp_dir().join("edgeseg-phantom-never-created");
            assert!(matches!(
                write_dataset(&dir, 2, w, h, 1),
                Err(PhantomError::BadSize { .. })
            ));
            assert!(!dir.exists());
        }
        assert!(generate(Modality::Ultrasound, MIN_SIDE, 4096, 3).is_ok());
    }

    #[test]
    fn deterministic_math_is_accurate() {
        for i in -200..=200 {
            let x = i as f32 * 0.05;
            assert!((sin(x) - x.sin()).abs() < 1e-5, "sin {x}");
            assert!((cos(x) - x.cos()).abs() < 1e-5, "cos {x}");
            assert!((exp(x) / x.exp() - 1.0).abs() < 1e-5, "exp {x}");
            let y = (x + 10.5) * 3.0;
            assert!((ln(y) - y.ln()).abs() < 1e-5, "ln {y}");
        }
        assert!(ln(0.0).is_finite() && exp(1000.0).is_finite() && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn write_dataset_writes_a_readable_dataset() {
        let dir = std::env::temp_dir().join(format!("edgeseg-phantom-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let n = write_dataset(&dir, 3, 72, 64, 5).unwrap();
        let samples = dataset::read_samples(&dir).unwrap();
        assert_eq!(samples.len(), n);
        assert!(n >= 6);
        let images: Vec<&str> = samples.iter().map(|s| s.image.as_str()).collect();
        assert_eq!(images[0], "us_0000.png");
        assert!(images.contains(&"endo_0001.png") && images.contains(&"us_0002.png"));
        for s in &samples {
            let image = image::open(dir.join(&s.image)).unwrap();
            assert_eq!((image.width(), image.height()), (72, 64));
            assert!(matches!(image, image::DynamicImage::ImageRgb8(_)));
            let mask = image::open(dir.join(&s.mask)).unwrap();
            let mask = mask.as_luma8().expect("8-bit gray mask");
            assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
            assert!(mask.pixels().any(|p| p.0[0] == 255));
            let attrs = s.attributes.as_ref().unwrap();
            let stem = s.image.trim_end_matches(".png");
            assert_eq!(
                s.mask,
                format!("{stem}_{}.png", attrs.class.as_deref().unwrap())
            );
            let modality = if stem.starts_with("us_") {
                "ultrasound"
            } else {
                "endoscopy"
            };
            assert_eq!(s.modality.as_deref(), Some(modality));
            assert_eq!(s.prompts.len(), 10);
        }
        // The same call again gives the same files.
        let first = fs::read(dir.join("endo_0001.png")).unwrap();
        write_dataset(&dir, 3, 72, 64, 5).unwrap();
        assert_eq!(fs::read(dir.join("endo_0001.png")).unwrap(), first);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_folder_is_an_io_error_with_its_path() {
        let file =
            std::env::temp_dir().join(format!("edgeseg-phantom-file-{}", std::process::id()));
        fs::write(&file, b"not a folder").unwrap();
        let dir = file.join("sub");
        match write_dataset(&dir, 1, 64, 64, 1) {
            Err(PhantomError::Io { path, .. }) => assert_eq!(path, dir),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        fs::remove_file(&file).unwrap();
    }

    #[test]
    fn locations_and_sizes_follow_the_documented_grid_and_thresholds() {
        assert_eq!(location_word(0.1, 0.1), "top left of the image");
        assert_eq!(location_word(0.5, 0.5), "center of the image");
        assert_eq!(location_word(0.9, 0.5), "right of the image");
        assert_eq!(location_word(0.5, 0.99), "bottom of the image");
        assert_eq!(location_word(1.0, 1.0), "bottom right of the image");
        assert_eq!(size_word(0.0), "small");
        assert_eq!(size_word(SMALL_MAX_FRACTION), "medium");
        assert_eq!(size_word(MEDIUM_MAX_FRACTION), "large");
    }
}
