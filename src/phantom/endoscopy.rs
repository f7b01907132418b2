//! Endoscopy phantoms: a colonoscope view of textured mucosa with a raised polyp and a metal
//! tool.

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
            let fine =
                (1.0 - smoothstep(0.0, vessel_width * 0.7, (vn2 - 0.5).abs())) * vessel_vis * 0.6;
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
