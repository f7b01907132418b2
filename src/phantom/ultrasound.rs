//! Ultrasound phantoms: a B-mode sector with speckle, tissue layers, hypoechoic lesions and an
//! anechoic vessel.

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
    let first = place_lesion(&fan, s, outline, mean_r, &[], &vessel, rng).unwrap_or_else(|| {
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
