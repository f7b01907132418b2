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

mod endoscopy;
#[cfg(test)]
mod tests;
mod ultrasound;
