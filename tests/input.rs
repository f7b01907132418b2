//! The input module through its public API: every fixture under `tests/fixtures/` (written by
//! `tests/fixtures/dicom/make_dicom.py`) loads to the expected frames, or fails with the
//! expected error naming the file.
//!
//! Fixture pattern: 64x48 frames, a gradient of 4*x with a bright square at rows 8..19,
//! columns 40..51 (multi-frame files move the square to columns 4+20k..15+20k in frame k).
//! RGB files: R = 4*x, G = 4*y, B = 128, square pure red.

use std::path::{Path, PathBuf};

use edgeseg::input::{load, InputError, InputKind, LoadedInput};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// An expected pixel: frame, x, y, RGB, tolerance per channel.
struct Px(usize, u32, u32, [u8; 3], u8);

const EXACT: u8 = 0;
const JPEG: u8 = 8;

fn gray(v: u8) -> [u8; 3] {
    [v, v, v]
}

/// Loads `rel` and checks frame count, 64x48 size, spacing (row, col in mm) and pixels.
fn check(rel: &str, frames: usize, spacing: Option<(f64, f64)>, pixels: &[Px]) -> LoadedInput {
    let loaded = load(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(loaded.frames.len(), frames, "{rel}: frame count");
    for (i, f) in loaded.frames.iter().enumerate() {
        assert_eq!(
            (f.width(), f.height()),
            (64, 48),
            "{rel}: size of frame {i}"
        );
        let got = f.spacing().map(|s| (s.row_mm, s.col_mm));
        match (got, spacing) {
            (Some((r, c)), Some((er, ec))) => {
                assert!(
                    (r - er).abs() < 1e-9 && (c - ec).abs() < 1e-9,
                    "{rel}: spacing {got:?}, expected {spacing:?}"
                )
            }
            _ => assert_eq!(got, spacing, "{rel}: spacing"),
        }
    }
    for &Px(frame, x, y, want, tol) in pixels {
        let got = loaded.frames[frame].pixel(x, y);
        let close = got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= tol);
        assert!(
            close,
            "{rel}: frame {frame} pixel ({x},{y}) is {got:?}, expected {want:?} ± {tol}"
        );
    }
    loaded
}

fn dicom_kind(loaded: &LoadedInput) -> (&str, &str, u32, Option<f64>) {
    match &loaded.kind {
        InputKind::Dicom {
            transfer_syntax,
            photometric,
            frame_count,
            frame_time_ms,
        } => (transfer_syntax, photometric, *frame_count, *frame_time_ms),
        other => panic!("expected a DICOM kind, got {other:?}"),
    }
}

/// The base gray pattern at four places: left edge, square, mid gradient, bottom right.
fn gray_pattern(tol: u8) -> Vec<Px> {
    vec![
        Px(0, 0, 0, gray(0), tol),
        Px(0, 45, 10, gray(255), tol),
        Px(0, 45, 30, gray(180), tol),
        Px(0, 32, 30, gray(128), tol),
        Px(0, 63, 47, gray(252), tol),
    ]
}

/// The RGB pattern: also proves rows are not flipped (G grows downwards).
fn rgb_pattern(tol: u8) -> Vec<Px> {
    vec![
        Px(0, 0, 0, [0, 0, 128], tol),
        Px(0, 45, 10, [255, 0, 0], tol),
        Px(0, 32, 30, [128, 120, 128], tol),
        Px(0, 63, 47, [252, 188, 128], tol),
        Px(0, 0, 47, [0, 188, 128], tol),
    ]
}

// ---------------------------------------------------------------------------------------------
// DICOM files that load
// ---------------------------------------------------------------------------------------------

#[test]
fn monochrome2_8bit_implicit_le_is_the_identity() {
    let loaded = check("dicom/mono2_8bit.dcm", 1, None, &gray_pattern(EXACT));
    assert_eq!(
        dicom_kind(&loaded),
        ("1.2.840.10008.1.2", "MONOCHROME2", 1, None)
    );
}

#[test]
fn monochrome1_16bit_applies_rescale_then_window_then_inverts() {
    // stored 16*g (square 4095), modality 2*stored - 1000, window 3000/4000, then inverted
    let loaded = check(
        "dicom/mono1_16bit_window.dcm",
        1,
        None,
        &[
            Px(0, 0, 0, gray(255), EXACT),   // below the window: black, inverted
            Px(0, 45, 10, gray(0), EXACT),   // above the window: white, inverted
            Px(0, 32, 30, gray(121), EXACT), // 255 - round(133.65)
            Px(0, 10, 30, gray(255), EXACT), // modality 280, still below the window
        ],
    );
    assert_eq!(dicom_kind(&loaded).1, "MONOCHROME1");
}

#[test]
fn signed_16bit_without_window_maps_min_max() {
    // values 10*g - 1000 (square 2000): min -1000 → 0, max 2000 → 255
    check(
        "dicom/signed_16bit.dcm",
        1,
        None,
        &[
            Px(0, 0, 0, gray(0), EXACT),
            Px(0, 45, 10, gray(255), EXACT),
            Px(0, 32, 30, gray(109), EXACT),
            Px(0, 63, 47, gray(214), EXACT),
        ],
    );
}

#[test]
fn rgb_interleaved_and_planar_agree() {
    for rel in ["dicom/rgb_8bit.dcm", "dicom/rgb_8bit_planar.dcm"] {
        let loaded = check(rel, 1, None, &rgb_pattern(EXACT));
        assert_eq!(dicom_kind(&loaded), ("1.2.840.10008.1.2.1", "RGB", 1, None));
    }
}

#[test]
fn ybr_full_and_native_ybr_full_422_become_rgb() {
    check("dicom/ybr_full.dcm", 1, None, &rgb_pattern(2));
    let loaded = check("dicom/ybr_full_422.dcm", 1, None, &rgb_pattern(3));
    assert_eq!(dicom_kind(&loaded).1, "YBR_FULL_422");
}

#[test]
fn multiframe_yields_every_frame_in_order() {
    let loaded = check(
        "dicom/multiframe_3.dcm",
        3,
        None,
        &[
            Px(0, 10, 14, gray(255), EXACT),
            Px(0, 30, 14, gray(120), EXACT),
            Px(1, 10, 14, gray(40), EXACT),
            Px(1, 30, 14, gray(255), EXACT),
            Px(2, 30, 14, gray(120), EXACT),
            Px(2, 50, 14, gray(255), EXACT),
            Px(2, 50, 30, gray(200), EXACT),
        ],
    );
    assert_eq!(dicom_kind(&loaded).2, 3);
    assert_eq!(dicom_kind(&loaded).3, Some(33.3), "Frame Time (0018,1063)");
}

#[test]
fn rle_lossless_color_and_16bit_multiframe() {
    let loaded = check("dicom/rle_rgb8.dcm", 1, None, &rgb_pattern(EXACT));
    assert_eq!(dicom_kind(&loaded).0, "1.2.840.10008.1.2.5");
    // stored 100*g, window 12750/25500 maps back to about g
    check(
        "dicom/rle_mono16_2frames.dcm",
        2,
        None,
        &[
            Px(0, 10, 14, gray(255), EXACT),
            Px(0, 30, 14, gray(120), 1),
            Px(1, 30, 14, gray(255), EXACT),
            Px(1, 10, 14, gray(40), 1),
            Px(1, 0, 0, gray(0), EXACT),
        ],
    );
}

#[test]
fn jpeg_baseline_ybr_full_422_decodes_to_rgb_within_jpeg_tolerance() {
    let loaded = check(
        "dicom/jpeg_baseline_ybr422.dcm",
        1,
        None,
        &rgb_pattern(JPEG),
    );
    assert_eq!(
        dicom_kind(&loaded),
        ("1.2.840.10008.1.2.4.50", "YBR_FULL_422", 1, None)
    );
}

#[test]
fn jpeg_baseline_gray_multiframe_has_one_jpeg_per_frame() {
    check(
        "dicom/jpeg_baseline_gray_2frames.dcm",
        2,
        None,
        &[
            Px(0, 10, 14, gray(255), JPEG),
            Px(0, 30, 14, gray(120), JPEG),
            Px(1, 10, 14, gray(40), JPEG),
            Px(1, 30, 14, gray(255), JPEG),
        ],
    );
}

#[test]
fn deflated_explicit_little_endian() {
    let loaded = check("dicom/deflated_mono8.dcm", 1, None, &gray_pattern(EXACT));
    assert_eq!(dicom_kind(&loaded).0, "1.2.840.10008.1.2.1.99");
}

#[test]
fn palette_color_goes_through_the_lookup_tables() {
    // red = index, green = 255 - index, blue = 0x80
    check(
        "dicom/palette_8bit.dcm",
        1,
        None,
        &[
            Px(0, 0, 0, [0, 255, 128], EXACT),
            Px(0, 45, 10, [255, 0, 128], EXACT),
            Px(0, 32, 30, [128, 127, 128], EXACT),
        ],
    );
}

#[test]
fn spacing_sources_in_order_of_preference() {
    // Pixel Spacing wins over the Imager Pixel Spacing also present
    check("dicom/pixel_spacing.dcm", 1, Some((0.3, 0.25)), &[]);
    check("dicom/imager_pixel_spacing.dcm", 1, Some((0.5, 0.4)), &[]);
    // the Doppler region (s, cm/s) is skipped; the B-mode region's cm become mm
    check("dicom/us_regions_spacing.dcm", 1, Some((0.2, 0.15)), &[]);
    check("dicom/mono2_8bit.dcm", 1, None, &[]);
}

// ---------------------------------------------------------------------------------------------
// Plain images
// ---------------------------------------------------------------------------------------------

#[test]
fn png_bmp_and_jpeg_images() {
    for rel in ["images/rgb.png", "images/rgb.bmp", "images/rgba.png"] {
        let loaded = check(rel, 1, None, &rgb_pattern(EXACT));
        assert_eq!(loaded.kind, InputKind::Image);
    }
    check("images/rgb.jpg", 1, None, &rgb_pattern(JPEG));
    check("images/gray.png", 1, None, &gray_pattern(EXACT));
    check("images/gray16.png", 1, None, &gray_pattern(EXACT));
}

#[test]
fn format_comes_from_content_not_extension() {
    // a JPEG named .png
    check("images/jpeg_named.png", 1, None, &rgb_pattern(JPEG));
}

// ---------------------------------------------------------------------------------------------
// Files that are refused
// ---------------------------------------------------------------------------------------------

/// Loads `rel`, expects an error for which `is` holds, whose path is the file and whose
/// one-line message starts with the path and contains every `needle`.
fn check_err(rel: &str, is: fn(&InputError) -> bool, needles: &[&str]) -> InputError {
    let path = fixture(rel);
    let err = match load(&path) {
        Ok(loaded) => panic!(
            "{rel}: loaded {} frames, expected an error",
            loaded.frames.len()
        ),
        Err(e) => e,
    };
    assert!(is(&err), "{rel}: unexpected variant {err:?}");
    assert_eq!(err.path(), path, "{rel}: path in {err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&path.display().to_string()),
        "{rel}: message does not name the file: {msg}"
    );
    assert!(!msg.contains('\n'), "{rel}: message spans lines: {msg}");
    for needle in needles {
        assert!(msg.contains(needle), "{rel}: {msg:?} lacks {needle:?}");
    }
    err
}

#[test]
fn missing_empty_and_unknown_files() {
    check_err(
        "dicom/nope.dcm",
        |e| matches!(e, InputError::Io { .. }),
        &["nope.dcm"],
    );
    check_err("dicom", |e| matches!(e, InputError::Io { .. }), &[]);
    check_err(
        "dicom/empty.dcm",
        |e| matches!(e, InputError::Empty { .. }),
        &["empty"],
    );
    check_err(
        "images/rgb.gif",
        |e| matches!(e, InputError::UnknownFormat { .. }),
        &["47 49 46 38", "DICOM", "PNG"],
    );
    check_err(
        "images/not_an_image.txt",
        |e| matches!(e, InputError::UnknownFormat { .. }),
        &["unknown file format"],
    );
}

#[test]
fn truncated_png_is_an_image_error() {
    check_err(
        "images/truncated.png",
        |e| matches!(e, InputError::Image { format: "PNG", .. }),
        &["cannot decode PNG"],
    );
}

#[test]
fn corrupt_and_cut_dicom_files() {
    check_err(
        "dicom/corrupt.dcm",
        |e| matches!(e, InputError::Dicom { .. }),
        &["not a readable DICOM file"],
    );
    check_err(
        "dicom/truncated.dcm",
        |e| matches!(e, InputError::Truncated { .. }),
        &["(7FE0,0010)", "declares 3072 bytes", "2072 more"],
    );
    // a length field claiming ~4 GiB is refused before anything reserves it
    check_err(
        "dicom/bogus_length.dcm",
        |e| matches!(e, InputError::Truncated { .. }),
        &["declares 4294967280 bytes"],
    );
    check_err(
        "dicom/deep_nesting.dcm",
        |e| matches!(e, InputError::Dicom { .. }),
        &["nest more than 32 levels"],
    );
}

#[test]
fn short_pixel_data_says_what_it_holds_and_needs() {
    let err = check_err(
        "dicom/short_pixel_data.dcm",
        |e| {
            matches!(
                e,
                InputError::PixelDataLength {
                    found: 1200,
                    expected: 12288,
                    frames: 3,
                    ..
                }
            )
        },
        &[],
    );
    let path = fixture("dicom/short_pixel_data.dcm");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: pixel data holds 1200 bytes, 3 frames of 64x64x1 at 8 bits need 12288",
            path.display()
        )
    );
}

#[test]
fn zero_and_absurd_dimensions() {
    check_err(
        "dicom/zero_rows.dcm",
        |e| {
            matches!(
                e,
                InputError::ZeroSize {
                    rows: 0,
                    cols: 64,
                    ..
                }
            )
        },
        &["no pixels (64x0, 1 frame)"],
    );
    check_err(
        "dicom/huge_side.dcm",
        |e| matches!(e, InputError::TooLarge { cols: 60000, .. }),
        &["60000x60000", "16384"],
    );
    check_err(
        "images/huge.png",
        |e| {
            matches!(
                e,
                InputError::TooLarge {
                    cols: 60000,
                    rows: 60000,
                    ..
                }
            )
        },
        &["1 frame of 60000x60000x3"],
    );
    check_err(
        "dicom/huge_frames.dcm",
        |e| matches!(e, InputError::TooLarge { frames: 100000, .. }),
        &["100000 frames of 4096x4096x1 at 16 bits"],
    );
}

#[test]
fn missing_attributes() {
    check_err(
        "dicom/missing_rows.dcm",
        |e| matches!(e, InputError::MissingAttribute { .. }),
        &["missing Rows (0028,0010)"],
    );
    check_err(
        "dicom/no_pixel_data.dcm",
        |e| matches!(e, InputError::MissingAttribute { .. }),
        &["missing Pixel Data (7FE0,0010)"],
    );
}

#[test]
fn unsupported_photometric_and_transfer_syntax() {
    check_err(
        "dicom/unsupported_photometric.dcm",
        |e| matches!(e, InputError::UnsupportedPhotometric { .. }),
        &["\"HSV\"", "not supported"],
    );
    check_err(
        "dicom/jpeg2000.dcm",
        |e| matches!(e, InputError::UnsupportedTransferSyntax { .. }),
        &[
            "1.2.840.10008.1.2.4.90",
            "JPEG 2000",
            "not supported in this build",
        ],
    );
}

#[test]
fn bad_compressed_frames_are_decode_errors() {
    check_err(
        "dicom/jpeg_size_mismatch.dcm",
        |e| matches!(e, InputError::PixelDecode { frame: Some(0), .. }),
        &["(frame 1 of 1)", "JPEG frame is 64x48", "32x24"],
    );
    check_err(
        "dicom/rle_bad_header.dcm",
        |e| matches!(e, InputError::PixelDecode { .. }),
        &["RLE header lists 4294967280 segments"],
    );
    check_err(
        "dicom/rle_short_segment.dcm",
        |e| matches!(e, InputError::PixelDecode { .. }),
        &["decodes to 256 bytes", "needs 3072"],
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged copies of the valid fixtures
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a fixed, dependency-free sequence of mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn damaged_copies_never_panic() {
    // Deflated files are left out: their element headers are compressed, so the length scan
    // cannot check them (see the dicom module docs).
    let valid = [
        "dicom/mono2_8bit.dcm",
        "dicom/mono1_16bit_window.dcm",
        "dicom/signed_16bit.dcm",
        "dicom/rgb_8bit_planar.dcm",
        "dicom/ybr_full_422.dcm",
        "dicom/multiframe_3.dcm",
        "dicom/rle_rgb8.dcm",
        "dicom/rle_mono16_2frames.dcm",
        "dicom/jpeg_baseline_ybr422.dcm",
        "dicom/jpeg_baseline_gray_2frames.dcm",
        "dicom/palette_8bit.dcm",
        "dicom/us_regions_spacing.dcm",
        "images/rgb.png",
        "images/rgb.bmp",
        "images/rgb.jpg",
    ];
    let dir = std::env::temp_dir().join(format!("edgeseg-input-damage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut loaded, mut refused) = (0, 0);
    for rel in valid {
        let original = std::fs::read(fixture(rel)).unwrap();
        for round in 0..60 {
            let mut bytes = original.clone();
            if round % 4 == 3 {
                bytes.truncate(rng.below(bytes.len()));
            } else {
                // damage past the preamble and magic, where parsing happens
                for _ in 0..1 + rng.below(4) {
                    let at = 132.min(bytes.len() - 1)
                        + rng.below(bytes.len().saturating_sub(132).max(1));
                    bytes[at] = rng.next() as u8;
                }
            }
            let path = dir.join(format!("{}-{round}", rel.replace('/', "-")));
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| load(&path));
            match outcome {
                Ok(Ok(_)) => loaded += 1,
                Ok(Err(e)) => {
                    assert_eq!(e.path(), path);
                    refused += 1;
                }
                Err(_) => panic!("{rel}: damaged copy {} panicked", path.display()),
            }
            std::fs::remove_file(&path).unwrap();
        }
    }
    std::fs::remove_dir(&dir).unwrap();
    assert!(
        loaded > 0 && refused > 0,
        "loaded {loaded}, refused {refused}"
    );
}
