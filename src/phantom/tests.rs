//! Tests of the phantom generator: determinism, structure masks and attributes, appearance.

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
            let ring = mean(&|i| near[i] && !touching[i] && !any[i] && p.frame.rgb()[3 * i] > 0);
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
    let file = std::env::temp_dir().join(format!("edgeseg-phantom-file-{}", std::process::id()));
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
