//! Result files: the mask as a PNG, an overlay PNG of the mask over the frame, and a pretty
//! JSON summary of a run, plus the naming scheme that ties them together.
//!
//! - Mask PNG: 8-bit grayscale at frame size, 255 inside the mask and 0 outside.
//! - Overlay PNG: 8-bit RGB, the frame with the mask filled in a colour at 40 % opacity and its
//!   contour drawn opaque, one pixel wide. A contour pixel is a mask pixel with a 4-neighbour
//!   outside the mask; the frame border counts as outside, so a mask touching the border is
//!   closed along it.
//! - Summary JSON: [`Summary`], one entry per frame with its [`Measures`] flattened in.
//!
//! Files are written whole (encoded in memory first), and every error names the file.

use std::fs;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use serde::Serialize;
use thiserror::Error;

use crate::frame::{Frame, Mask};
use crate::postprocess::Measures;

/// Opacity of the overlay fill, out of 255 (102 / 255 = 0.4).
const FILL_ALPHA: u32 = 102;

/// Errors writing result files.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a {width}x{height} PNG: {source}")]
    Png {
        width: u32,
        height: u32,
        source: image::ImageError,
    },
    #[error("{path}: cannot serialise the summary: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("mask is {mask_width}x{mask_height} but the frame is {frame_width}x{frame_height}")]
    MaskSize {
        frame_width: u32,
        frame_height: u32,
        mask_width: u32,
        mask_height: u32,
    },
}

/// What one run produced, written as the summary JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The input file.
    pub input: String,
    /// Model name from its manifest.
    pub model: String,
    /// Graph precision used (`f32`, `f16`, `int8`).
    pub precision: String,
    /// The text prompt, for prompted models.
    pub prompt: Option<String>,
    pub frames: Vec<FrameSummary>,
}

/// One segmented frame in a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameSummary {
    /// Frame index within the input (0 for single images).
    pub frame: usize,
    pub width: u32,
    pub height: u32,
    #[serde(flatten)]
    pub measures: Measures,
    /// Mask PNG file name.
    pub mask: String,
    /// Overlay PNG file name.
    pub overlay: String,
    /// Label map PNG file name (pixel value = class index), for models with 3+ classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_map: Option<String>,
    /// Pixels per class name, for models with 3+ classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_areas: Option<std::collections::BTreeMap<String, usize>>,
    /// SAM: predicted IoU of each output, the index of the chosen output, and every output's mask file
    /// when all were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iou_predictions: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_masks: Option<Vec<String>>,
    pub timings_ms: Timings,
}

/// Per-stage wall time for one frame, in milliseconds.
#[derive(Debug, Serialize, Default, Clone, Copy, PartialEq)]
pub struct Timings {
    pub decode: f64,
    pub preprocess: f64,
    /// Text encoding; 0 when the prompt embedding came from the cache.
    pub text: f64,
    pub inference: f64,
    pub postprocess: f64,
}

/// The file name of a per-frame PNG: `<stem>_<suffix>.png`, or `<stem>_f<frame>_<suffix>.png`
/// when a frame index is given (pass one only for inputs with several frames).
///
/// `output_name("scan", None, "mask")` is `scan_mask.png`;
/// `output_name("cine", Some(3), "overlay")` is `cine_f3_overlay.png`.
pub fn output_name(stem: &str, frame_index: Option<usize>, suffix: &str) -> String {
    match frame_index {
        Some(i) => format!("{stem}_f{i}_{suffix}.png"),
        None => format!("{stem}_{suffix}.png"),
    }
}

/// The mask as an 8-bit grayscale PNG (0 outside, 255 inside), in memory.
pub fn mask_png(mask: &Mask) -> Result<Vec<u8>, OutputError> {
    let gray: Vec<u8> = mask
        .bits()
        .iter()
        .map(|&b| if b { 255 } else { 0 })
        .collect();
    encode_png(&gray, mask.width(), mask.height(), ExtendedColorType::L8)
}

/// Writes the mask as an 8-bit grayscale PNG (0 outside, 255 inside).
pub fn write_mask_png(path: &Path, mask: &Mask) -> Result<(), OutputError> {
    write_file(path, &mask_png(mask)?)
}

/// Writes a label map as an 8-bit grayscale PNG whose pixel values are class indices.
pub fn write_label_png(
    path: &Path,
    width: u32,
    height: u32,
    labels: &[u8],
) -> Result<(), OutputError> {
    write_file(
        path,
        &encode_png(labels, width, height, ExtendedColorType::L8)?,
    )
}

/// Writes `frame` with `mask` drawn over it in `color`: a 40 % fill and an opaque one-pixel
/// contour. The mask must have the frame's size.
pub fn write_overlay_png(
    path: &Path,
    frame: &Frame,
    mask: &Mask,
    color: [u8; 3],
) -> Result<(), OutputError> {
    let rgb = overlay(frame, mask, color)?;
    let png = encode_png(&rgb, frame.width(), frame.height(), ExtendedColorType::Rgb8)?;
    write_file(path, &png)
}

/// Writes the summary as pretty-printed JSON.
pub fn write_summary(path: &Path, summary: &Summary) -> Result<(), OutputError> {
    let mut json = serde_json::to_vec_pretty(summary).map_err(|source| OutputError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    json.push(b'\n');
    write_file(path, &json)
}

/// The overlay's RGB bytes (row-major, interleaved).
fn overlay(frame: &Frame, mask: &Mask, color: [u8; 3]) -> Result<Vec<u8>, OutputError> {
    let (w, h) = (frame.width(), frame.height());
    if mask.width() != w || mask.height() != h {
        return Err(OutputError::MaskSize {
            frame_width: w,
            frame_height: h,
            mask_width: mask.width(),
            mask_height: mask.height(),
        });
    }
    let (w, h) = (w as usize, h as usize);
    let bits = mask.bits();
    let inside = |x: usize, y: usize| bits[y * w + x];
    let mut rgb = frame.rgb().to_vec();
    for y in 0..h {
        for x in 0..w {
            if !inside(x, y) {
                continue;
            }
            let contour = on_contour(inside, x, y, w, h);
            paint(
                &mut rgb[(y * w + x) * 3..(y * w + x) * 3 + 3],
                color,
                contour,
            );
        }
    }
    Ok(rgb)
}

/// Whether mask pixel (x, y) of a `w × h` mask lies on its contour: a 4-neighbour is outside
/// the mask, the border counting as outside.
pub(crate) fn on_contour(
    inside: impl Fn(usize, usize) -> bool,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
) -> bool {
    x == 0
        || y == 0
        || x + 1 == w
        || y + 1 == h
        || !inside(x - 1, y)
        || !inside(x + 1, y)
        || !inside(x, y - 1)
        || !inside(x, y + 1)
}

/// Paints one mask pixel in `color`: opaque on the contour, blended at 40 % inside.
pub(crate) fn paint(px: &mut [u8], color: [u8; 3], contour: bool) {
    for (v, &c) in px.iter_mut().zip(&color) {
        *v = if contour { c } else { blend(*v, c) };
    }
}

/// `base * 0.6 + color * 0.4`, rounded.
pub(crate) fn blend(base: u8, color: u8) -> u8 {
    let mixed = (u32::from(base) * (255 - FILL_ALPHA) + u32::from(color) * FILL_ALPHA + 127) / 255;
    // At most (255 * 255 + 127) / 255 = 255.
    mixed.min(255) as u8
}

fn encode_png(
    data: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
) -> Result<Vec<u8>, OutputError> {
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(data, width, height, color)
        .map_err(|source| OutputError::Png {
            width,
            height,
            source,
        })?;
    Ok(png)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    fs::write(path, bytes).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ColorType, ImageFormat};

    fn mask(picture: &str) -> Mask {
        Mask::from_ascii(picture)
    }

    /// A fresh, empty folder for one test's files.
    fn temp_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("edgeseg-output-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn decode(png: &[u8]) -> image::DynamicImage {
        image::load_from_memory_with_format(png, ImageFormat::Png).unwrap()
    }

    #[test]
    fn mask_png_decodes_to_the_same_bits_and_size() {
        let pictures = ["#", ".", "#..#.\n.##..\n....#", "...\n...\n...\n.#."];
        for picture in pictures {
            let m = mask(picture);
            let img = decode(&mask_png(&m).unwrap());
            assert_eq!(img.color(), ColorType::L8, "{picture}");
            assert_eq!((img.width(), img.height()), (m.width(), m.height()));
            let expected: Vec<u8> = m.bits().iter().map(|&b| if b { 255 } else { 0 }).collect();
            assert_eq!(img.to_luma8().into_raw(), expected, "{picture}");
        }
    }

    #[test]
    fn write_mask_png_writes_a_decodable_file() {
        let dir = temp_dir("mask");
        let path = dir.join(output_name("scan", None, "mask"));
        let m = mask("##.\n.#.");
        write_mask_png(&path, &m).unwrap();
        let img = image::open(&path).unwrap().to_luma8();
        assert_eq!((img.width(), img.height()), (3, 2));
        assert_eq!(img.into_raw(), vec![255, 255, 0, 0, 255, 0]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_errors_name_the_path() {
        let path = temp_dir("missing")
            .join("no-such-folder")
            .join("x_mask.png");
        let err = write_mask_png(&path, &mask("#")).unwrap_err();
        match &err {
            OutputError::Io { path: p, .. } => assert_eq!(p, &path),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().starts_with(&path.display().to_string()),
            "{err}"
        );
    }

    /// Classifies each overlay pixel against the frame and colour: '.' unchanged, 'f' filled,
    /// 'c' contour.
    fn classes(frame: &Frame, rgb: &[u8], color: [u8; 3]) -> String {
        let w = frame.width() as usize;
        let mut s = String::new();
        for (i, (out, src)) in rgb.chunks(3).zip(frame.rgb().chunks(3)).enumerate() {
            if i > 0 && i % w == 0 {
                s.push('\n');
            }
            let fill: Vec<u8> = src.iter().zip(&color).map(|(&b, &c)| blend(b, c)).collect();
            s.push(if out == src {
                '.'
            } else if out == color {
                'c'
            } else if out == fill.as_slice() {
                'f'
            } else {
                '?'
            });
        }
        s
    }

    #[test]
    fn overlay_fills_inside_and_outlines_the_contour() {
        // (mask, expected classes)
        let cases = [
            (
                ".......
                 .#####.
                 .#####.
                 .#####.
                 .......",
                ".......\n\
                 .ccccc.\n\
                 .cfffc.\n\
                 .ccccc.\n\
                 .......",
            ),
            (
                // Touching the border: the border closes the contour.
                "####.
                 ####.
                 ####.
                 .....",
                "cccc.\n\
                 cffc.\n\
                 cccc.\n\
                 .....",
            ),
            (
                // A one-pixel-wide line is all contour; a hole makes an inner contour.
                "#####
                 #...#
                 #####
                 .....
                 #####",
                "ccccc\n\
                 c...c\n\
                 ccccc\n\
                 .....\n\
                 ccccc",
            ),
            ("...\n...", "...\n..."),
        ];
        let color = [255, 0, 0];
        for (picture, expected) in cases {
            let m = mask(picture);
            let gray: Vec<u8> = (0..m.width() * m.height())
                .map(|i| (i * 37 % 200) as u8 + 20)
                .collect();
            let frame = Frame::from_gray(m.width(), m.height(), &gray).unwrap();
            let rgb = overlay(&frame, &m, color).unwrap();
            assert_eq!(classes(&frame, &rgb, color), expected, "{picture}");
        }
    }

    #[test]
    fn overlay_fill_is_forty_percent_colour() {
        let m = mask("###\n###\n###");
        let frame = Frame::from_rgb(3, 3, [100, 200, 0].repeat(9)).unwrap();
        let rgb = overlay(&frame, &m, [255, 0, 50]).unwrap();
        // centre: 0.6 * frame + 0.4 * colour, rounded
        assert_eq!(&rgb[12..15], &[162, 120, 20]);
        // contour: opaque colour
        assert_eq!(&rgb[0..3], &[255, 0, 50]);
        assert_eq!(
            (blend(0, 255), blend(255, 0), blend(255, 255), blend(0, 0)),
            (102, 153, 255, 0)
        );
    }

    #[test]
    fn write_overlay_png_round_trips() {
        let dir = temp_dir("overlay");
        let path = dir.join(output_name("cine", Some(2), "overlay"));
        let m = mask("....\n.##.\n.##.\n....");
        let frame = Frame::from_gray(4, 4, &[50; 16]).unwrap();
        write_overlay_png(&path, &frame, &m, [0, 255, 0]).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!(img.color(), ColorType::Rgb8);
        assert_eq!(
            img.to_rgb8().into_raw(),
            overlay(&frame, &m, [0, 255, 0]).unwrap()
        );
        assert_eq!(img.to_rgb8().get_pixel(1, 1).0, [0, 255, 0]);
        assert_eq!(img.to_rgb8().get_pixel(0, 0).0, [50, 50, 50]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn overlay_rejects_a_mask_of_another_size() {
        let frame = Frame::from_gray(3, 2, &[0; 6]).unwrap();
        let err = overlay(&frame, &mask("##\n##"), [1, 2, 3]).unwrap_err();
        assert!(matches!(
            err,
            OutputError::MaskSize {
                frame_width: 3,
                frame_height: 2,
                mask_width: 2,
                mask_height: 2
            }
        ));
        assert_eq!(err.to_string(), "mask is 2x2 but the frame is 3x2");
    }

    #[test]
    fn output_name_table() {
        let cases = [
            ("scan", None, "mask", "scan_mask.png"),
            ("scan", None, "overlay", "scan_overlay.png"),
            ("cine", Some(0), "mask", "cine_f0_mask.png"),
            ("cine", Some(12), "overlay", "cine_f12_overlay.png"),
            ("us.0001", None, "mask", "us.0001_mask.png"),
        ];
        for (stem, frame, suffix, expected) in cases {
            assert_eq!(output_name(stem, frame, suffix), expected);
        }
    }

    fn summary() -> Summary {
        Summary {
            input: "scan.png".into(),
            model: "clipseg-phantom".into(),
            precision: "f32".into(),
            prompt: None,
            frames: vec![FrameSummary {
                frame: 0,
                width: 64,
                height: 48,
                measures: Measures {
                    area_px: 12,
                    area_mm2: Some(3.0),
                    bbox: Some([1, 2, 4, 5]),
                    mean_probability: Some(0.75),
                },
                mask: "scan_mask.png".into(),
                overlay: "scan_overlay.png".into(),
                label_map: None,
                class_areas: None,
                iou_predictions: None,
                chosen: None,
                all_masks: None,
                timings_ms: Timings {
                    decode: 1.5,
                    inference: 20.0,
                    ..Timings::default()
                },
            }],
        }
    }

    #[test]
    fn summary_json_has_the_fields() {
        let dir = temp_dir("summary");
        let path = dir.join("scan.json");
        write_summary(&path, &summary()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\n  \"input\""), "not pretty: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected = serde_json::json!({
            "input": "scan.png",
            "model": "clipseg-phantom",
            "precision": "f32",
            "prompt": null,
            "frames": [{
                "frame": 0,
                "width": 64,
                "height": 48,
                "area_px": 12,
                "area_mm2": 3.0,
                "bbox": [1, 2, 4, 5],
                "mean_probability": 0.75,
                "mask": "scan_mask.png",
                "overlay": "scan_overlay.png",
                "timings_ms": {
                    "decode": 1.5,
                    "preprocess": 0.0,
                    "text": 0.0,
                    "inference": 20.0,
                    "postprocess": 0.0
                }
            }]
        });
        assert_eq!(v, expected);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_measures_serialise_as_null() {
        let mut s = summary();
        s.prompt = Some("round lesion".into());
        s.frames[0].measures = Measures {
            area_px: 0,
            area_mm2: None,
            bbox: None,
            mean_probability: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["prompt"], "round lesion");
        let f = &v["frames"][0];
        for key in ["area_mm2", "bbox", "mean_probability"] {
            assert!(f[key].is_null(), "{key}: {f}");
        }
        assert_eq!(f["area_px"], 0);
    }

    #[test]
    fn blend_matches_forty_percent() {
        assert_eq!(blend(0, 255), 102);
        assert_eq!(blend(255, 0), 153);
        assert_eq!(blend(200, 200), 200);
        assert_eq!(blend(100, 0), 60);
    }
}
