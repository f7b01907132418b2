//! The display sink through its public API: frames rendered by the PNG back end into a
//! temporary directory, read back and checked pixel by pixel; device back ends pointed at
//! things that are not devices fail with errors naming the device and the request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgeseg::display::{render, DisplayConfig, DisplaySink};
use edgeseg::frame::{Frame, Mask};
use edgeseg::sink::{Counters, Emitted, Sink, Timestamps};

/// A fresh directory under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("edgeseg-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(text: &str) -> DisplayConfig {
    toml::from_str(text).unwrap()
}

fn png_config(dir: &Path, extra: &str) -> DisplayConfig {
    config(&format!(
        "backend = \"png\"\npath = {:?}\n{extra}",
        dir.display().to_string()
    ))
}

/// A 64x48 frame whose pixel (x, y) is (3 x, 5 y, 200); a mask covering the square
/// [16, 32) x [16, 32).
fn emitted(seq: u64) -> Emitted {
    let (w, h) = (64u32, 48u32);
    let rgb = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [(3 * x) as u8, (5 * y) as u8, 200]))
        .collect();
    let bits = (0..h)
        .flat_map(|y| (0..w).map(move |x| (16..32).contains(&x) && (16..32).contains(&y)))
        .collect();
    Emitted {
        seq,
        timestamps: Timestamps::default(),
        frame: Arc::new(Frame::from_rgb(w, h, rgb).unwrap()),
        mask: Arc::new(Mask::new(w, h, bits).unwrap()),
        label: Arc::from("gallbladder"),
        area_px: 256,
        area_mm2: None,
        counters: Counters::default(),
        fps: 24.5,
        latency_ms: 38.2,
    }
}

fn read_png(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
}

/// 60 % base + 40 % colour, rounded, as documented for the overlay.
fn blend(base: u8, color: u8) -> u8 {
    ((u32::from(base) * 153 + u32::from(color) * 102 + 127) / 255) as u8
}

#[test]
fn png_snapshots_every_nth_frame_with_exact_pixels() {
    let dir = TempDir::new("png");
    let mut sink =
        DisplaySink::open(&png_config(&dir.0, "every = 2\ncolor = [255, 0, 255]")).unwrap();
    for seq in [0, 1, 3, 4, 7] {
        sink.emit(&emitted(seq)).unwrap();
    }
    sink.finish(Counters::default()).unwrap();

    // Offered frames 0, 2, 4 of the stream are written, named by their sequence numbers.
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "display_000000.png",
            "display_000003.png",
            "display_000007.png"
        ]
    );

    let img = read_png(&dir.0.join("display_000003.png"));
    assert_eq!(img.dimensions(), (64, 48));
    let px = |x: u32, y: u32| img.get_pixel(x, y).0;
    let frame = |x: u32, y: u32| [(3 * x) as u8, (5 * y) as u8, 200];
    // Outside the mask: the frame.
    assert_eq!(px(40, 20), frame(40, 20));
    assert_eq!(px(15, 24), frame(15, 24));
    // Contour: opaque mask colour, one pixel wide on every side.
    for (x, y) in [(16, 24), (31, 24), (24, 16), (24, 31), (16, 16), (31, 31)] {
        assert_eq!(px(x, y), [255, 0, 255], "contour at ({x}, {y})");
    }
    // Fill: 40 % mask colour over the frame.
    for (x, y) in [(17, 24), (24, 24), (30, 30)] {
        let f = frame(x, y);
        assert_eq!(
            px(x, y),
            [blend(f[0], 255), blend(f[1], 0), blend(f[2], 255)],
            "fill at ({x}, {y})"
        );
    }
    // Text (6x10 cells): the label at the top left from (2, 2), the status line ending on
    // row 46 at the bottom left; white on black.
    let mut white = 0;
    for (x0, x1, y0, y1) in [(2, 2 + 11 * 6, 2, 12), (2, 64, 37, 47)] {
        for y in y0..y1 {
            for x in x0..x1.min(64) {
                let p = px(x, y);
                assert!(p == [255; 3] || p == [0; 3], "text cell ({x}, {y}): {p:?}");
                white += usize::from(p == [255; 3]);
            }
        }
    }
    assert!(white > 100, "glyphs drawn: {white} white pixels");
}

#[test]
fn png_canvas_of_another_size_letterboxes_the_frame() {
    let dir = TempDir::new("sized");
    let mut sink =
        DisplaySink::open(&png_config(&dir.0, "every = 1\nwidth = 160\nheight = 48")).unwrap();
    sink.emit(&emitted(5)).unwrap();
    let img = read_png(&dir.0.join("display_000005.png"));
    assert_eq!(img.dimensions(), (160, 48));
    // The 64x48 frame is centred unscaled: columns 48..112; black bars either side.
    assert_eq!(img.get_pixel(20, 24).0, [0, 0, 0]);
    assert_eq!(img.get_pixel(130, 24).0, [0, 0, 0]);
    assert_eq!(img.get_pixel(48 + 40, 20).0, [120, 100, 200]);
    assert_eq!(
        img.get_pixel(48 + 16, 24).0,
        [0, 255, 0],
        "default colour contour"
    );
}

#[test]
fn render_is_public_and_matches_the_sink() {
    let dir = TempDir::new("render");
    let mut sink = DisplaySink::open(&png_config(&dir.0, "every = 1")).unwrap();
    let out = emitted(9);
    sink.emit(&out).unwrap();
    let mut canvas = edgeseg::display::Canvas::new(64, 48).unwrap();
    let scene = render::Scene {
        frame: &out.frame,
        mask: &out.mask,
        label: &out.label,
        fps: out.fps,
        latency_ms: out.latency_ms,
    };
    render::render(&mut canvas, &scene, &render::Style::new([0, 255, 0])).unwrap();
    let img = read_png(&dir.0.join("display_000009.png"));
    assert_eq!(img.as_raw().as_slice(), canvas.rgb());
}

#[test]
fn device_back_ends_on_plain_files_fail_clearly() {
    let dir = TempDir::new("devices");
    let file = dir.0.join("not-a-device");
    std::fs::write(&file, [0u8; 64]).unwrap();
    let path = format!("{:?}", file.display().to_string());

    let err = DisplaySink::open(&config(&format!("backend = \"fbdev\"\npath = {path}")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not-a-device: FBIOGET_VSCREENINFO failed"),
        "{err}"
    );

    let err = DisplaySink::open(&config(&format!("backend = \"drm\"\npath = {path}")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not-a-device: DRM_IOCTL_MODE_GETRESOURCES failed"),
        "{err}"
    );

    let missing = dir.0.join("missing");
    let err = DisplaySink::open(&config(&format!(
        "backend = \"drm\"\npath = {:?}",
        missing.display().to_string()
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing: No such file or directory"), "{err}");
}
