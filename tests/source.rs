//! Live frame sources through their public API: folder order, looping and a corrupt file in
//! the middle; pacing and the stop flag; raw streams with exact pixels and a truncated last
//! frame; DICOM cine frame count and frame time; a missing V4L2 device (no hardware needed).
//!
//! Timing checks are lower bounds with generous upper bounds, never tight windows.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgeseg::frame::Frame;
use edgeseg::source::{
    open, DicomCineSource, FolderSource, PhantomModality, PhantomSource, PixelFormat, RawFormat,
    RawSource, Source, SourceConfig, SourceError, SourceKind, V4l2Settings, V4l2Source,
};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A fresh empty folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("edgeseg-source-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes a 4x2 PNG of one colour.
fn write_png(path: &Path, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(4, 2, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

fn frame(source: &mut dyn Source, stop: &AtomicBool) -> Frame {
    match source.next_frame(stop) {
        Ok(Some(frame)) => frame,
        Ok(None) => panic!("{}: ended early", source.describe()),
        Err(e) => panic!("{}: {e}", source.describe()),
    }
}

/// A folder: a_01.png (red), a_02.png (corrupt), a_03.dcm (3 frames), a_10.png (blue), and
/// files the listing skips.
fn sample_folder(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    write_png(&dir.0.join("a_10.png"), [0, 0, 255]);
    write_png(&dir.0.join("a_01.png"), [255, 0, 0]);
    fs::copy(fixture("images/truncated.png"), dir.0.join("a_02.png")).unwrap();
    fs::copy(fixture("dicom/multiframe_3.dcm"), dir.0.join("a_03.dcm")).unwrap();
    fs::write(dir.0.join("notes.txt"), "not a frame").unwrap();
    write_png(&dir.0.join(".hidden.png"), [0, 255, 0]);
    fs::create_dir(dir.0.join("sub.png")).unwrap();
    dir
}

/// Checks one pass over [`sample_folder`]: red, an error naming a_02.png, the three DICOM
/// frames in order (the bright square moves right), blue.
fn check_pass(source: &mut dyn Source, stop: &AtomicBool, dir: &Path) {
    assert_eq!(frame(source, stop).pixel(0, 0), [255, 0, 0]);
    let err = source.next_frame(stop).unwrap_err();
    assert!(
        matches!(err, SourceError::Input(ref e) if e.path() == dir.join("a_02.png")),
        "{err}"
    );
    assert!(err.to_string().contains("a_02.png"), "{err}");
    let cine: Vec<Frame> = (0..3).map(|_| frame(source, stop)).collect();
    assert_eq!(cine[0].pixel(10, 14), [255, 255, 255]);
    assert_eq!(cine[1].pixel(30, 14), [255, 255, 255]);
    assert_eq!(cine[2].pixel(50, 14), [255, 255, 255]);
    assert_eq!(cine[1].pixel(10, 14), [40, 40, 40]);
    assert_eq!(frame(source, stop).pixel(3, 1), [0, 0, 255]);
}

#[test]
fn folder_plays_in_name_order_reports_a_corrupt_file_and_goes_on() {
    let dir = sample_folder("once");
    let stop = AtomicBool::new(false);
    let mut source = FolderSource::from_dir(&dir.0, None, false).unwrap();
    let names: Vec<_> = source
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a_01.png", "a_02.png", "a_03.dcm", "a_10.png"]);
    check_pass(&mut source, &stop, &dir.0);
    assert!(source.next_frame(&stop).unwrap().is_none());
    assert!(source.next_frame(&stop).unwrap().is_none(), "stays ended");
}

#[test]
fn folder_loops_through_a_config() {
    let dir = sample_folder("loop");
    let stop = AtomicBool::new(false);
    let config: SourceConfig = toml::from_str(&format!(
        "kind = \"folder\"\npath = {:?}\nloop = true",
        dir.0.to_str().unwrap()
    ))
    .unwrap();
    let mut source = open(&config).unwrap();
    let description = source.describe();
    assert!(
        description.contains("(4 files) as fast as possible, looping"),
        "{description}"
    );
    for _ in 0..3 {
        check_pass(source.as_mut(), &stop, &dir.0);
    }
}

#[test]
fn a_folder_of_broken_files_ends_instead_of_spinning() {
    let dir = TempDir::new("broken");
    fs::copy(fixture("images/truncated.png"), dir.0.join("x.png")).unwrap();
    let stop = AtomicBool::new(false);
    let mut source = FolderSource::from_dir(&dir.0, None, true).unwrap();
    assert!(source.next_frame(&stop).is_err());
    assert!(source.next_frame(&stop).unwrap().is_none());
}

#[test]
fn empty_and_missing_folders_are_clear_errors() {
    let dir = TempDir::new("empty");
    fs::write(dir.0.join("readme.md"), "nothing here").unwrap();
    let err = FolderSource::from_dir(&dir.0, None, false).err().unwrap();
    assert!(matches!(err, SourceError::NoFiles { .. }), "{err}");
    assert!(err.to_string().contains(".png"), "{err}");

    let missing = dir.0.join("nope");
    let err = FolderSource::from_dir(&missing, None, false).err().unwrap();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot list folder", missing.display())),
        "{err}"
    );
}

#[test]
fn a_file_list_plays_in_the_given_order() {
    let stop = AtomicBool::new(false);
    let files = vec![fixture("images/gray.png"), fixture("images/rgb.png")];
    let mut source = FolderSource::from_files(files.clone(), None, false).unwrap();
    let first = frame(&mut source, &stop);
    let second = frame(&mut source, &stop);
    assert_eq!(first, edgeseg::input::load(&files[0]).unwrap().frames[0]);
    assert_eq!(second, edgeseg::input::load(&files[1]).unwrap().frames[0]);
    assert!(source.next_frame(&stop).unwrap().is_none());
}

#[test]
fn pacing_holds_frames_to_the_given_rate() {
    let stop = AtomicBool::new(false);
    let mut source = FolderSource::from_files(
        vec![fixture("images/rgb.png")],
        Some(Duration::from_millis(20)),
        true,
    )
    .unwrap();
    assert!(
        source.describe().contains("at 50 fps"),
        "{}",
        source.describe()
    );
    let start = Instant::now();
    for _ in 0..10 {
        frame(&mut source, &stop);
    }
    let elapsed = start.elapsed();
    // first frame at once, then nine intervals of 20 ms
    assert!(elapsed >= Duration::from_millis(160), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn stop_ends_a_paced_wait_promptly() {
    let stop = AtomicBool::new(false);
    let mut source = PhantomSource::new(
        PhantomModality::Endoscopy,
        64,
        48,
        1,
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    frame(&mut source, &stop);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
        });
        assert!(source.next_frame(&stop).unwrap().is_none());
    });
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert!(
        source.next_frame(&stop).unwrap().is_none(),
        "stop stays seen"
    );
}

#[test]
fn phantom_config_defaults_to_30_fps_alternating() {
    let config = SourceConfig::from_spec("phantom").unwrap();
    let mut source = open(&config).unwrap();
    let description = source.describe();
    assert!(
        description.starts_with("phantom alternate 320x240, seed 0, ring of 16 frames, at 30 fps"),
        "{description}"
    );
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let frames: Vec<Frame> = (0..4).map(|_| frame(source.as_mut(), &stop)).collect();
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert_eq!((frames[0].width(), frames[0].height()), (320, 240));
    assert_ne!(frames[0], frames[1]);
}

fn raw(format: &str, bytes: Vec<u8>) -> RawSource<Cursor<Vec<u8>>> {
    RawSource::new(
        Cursor::new(bytes),
        "test stream",
        format.parse().unwrap(),
        None,
    )
}

#[test]
fn raw_gray8_rgb24_and_yuyv_give_exact_pixels() {
    let stop = AtomicBool::new(false);

    let mut gray = raw("2x2:gray8", vec![0, 50, 100, 255, 7, 7, 7, 7]);
    let f = frame(&mut gray, &stop);
    assert_eq!(f.rgb(), [0, 0, 0, 50, 50, 50, 100, 100, 100, 255, 255, 255]);
    assert_eq!(frame(&mut gray, &stop).pixel(1, 1), [7, 7, 7]);
    assert!(gray.next_frame(&stop).unwrap().is_none());

    let mut rgb = raw("2x1:rgb24", vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(frame(&mut rgb, &stop).rgb(), [1, 2, 3, 4, 5, 6]);
    assert!(rgb.next_frame(&stop).unwrap().is_none());

    // BT.601 limited range: Y 16 is black, 235 white; 81/90/240 is pure red
    let mut yuyv = raw("4x1:yuyv", vec![16, 128, 235, 128, 81, 90, 81, 240]);
    assert_eq!(
        frame(&mut yuyv, &stop).rgb(),
        [0, 0, 0, 255, 255, 255, 255, 0, 0, 255, 0, 0]
    );
    assert!(yuyv.next_frame(&stop).unwrap().is_none());
    assert_eq!(
        yuyv.describe(),
        "raw 4x1:yuyv frames on test stream, as fast as they arrive"
    );
}

#[test]
fn a_truncated_last_frame_is_one_error_then_the_end() {
    let stop = AtomicBool::new(false);
    let mut source = raw("2x2:rgb24", vec![9; 12 + 5]);
    frame(&mut source, &stop);
    let err = source.next_frame(&stop).unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::RawTruncated {
                frame: 1,
                got: 5,
                expected: 12,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "test stream: stream ended inside raw frame 1: got 5 of 12 bytes; the partial frame is \
         dropped"
    );
    assert!(source.next_frame(&stop).unwrap().is_none());
    assert!(source.next_frame(&stop).unwrap().is_none());
}

#[test]
fn raw_configs_name_the_missing_key() {
    let mut config = SourceConfig::from_spec("raw:8x8:gray8").unwrap();
    config.width = None;
    let err = open(&config).err().unwrap();
    assert_eq!(
        err.to_string(),
        "source configuration: `width` is required for a raw source"
    );
    let missing = SourceConfig {
        path: Some(PathBuf::from("/nonexistent/frames.raw")),
        ..SourceConfig::from_spec("raw:8x8:gray8").unwrap()
    };
    let err = open(&missing).err().unwrap().to_string();
    assert!(
        err.starts_with("/nonexistent/frames.raw: cannot read raw frame 0"),
        "{err}"
    );
    let format: RawFormat = "8x8:gray8".parse().unwrap();
    assert_eq!(format.format(), PixelFormat::Gray8);
}

#[test]
fn dicom_cine_plays_every_frame_at_the_file_frame_time() {
    let path = fixture("dicom/multiframe_3.dcm");
    let stop = AtomicBool::new(false);
    let mut source = DicomCineSource::open(&path, None, true).unwrap();
    assert_eq!(source.frame_count(), 3);
    let file = source.file_interval().unwrap();
    assert!(
        (file.as_secs_f64() * 1000.0 - 33.3).abs() < 1e-6,
        "{file:?}"
    );
    assert_eq!(source.interval(), Some(file));
    assert!(
        source
            .describe()
            .contains("(3 frames) at 30.03 fps (the file's frame time), looping"),
        "{}",
        source.describe()
    );
    let start = Instant::now();
    let frames: Vec<Frame> = (0..4).map(|_| frame(&mut source, &stop)).collect();
    assert!(
        start.elapsed() >= Duration::from_millis(99),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(frames[0].pixel(10, 14), [255, 255, 255]);
    assert_eq!(frames[2].pixel(50, 14), [255, 255, 255]);
    assert_eq!(frames[3], frames[0], "looped");
}

#[test]
fn dicom_cine_honours_a_given_rate_and_ends_without_looping() {
    let mut config = SourceConfig::from_spec(&format!(
        "dicom:{}",
        fixture("dicom/multiframe_3.dcm").display()
    ))
    .unwrap();
    config.fps = Some(200.0);
    let mut source = open(&config).unwrap();
    assert!(
        source.describe().contains("at 200 fps, once"),
        "{}",
        source.describe()
    );
    let stop = AtomicBool::new(false);
    for _ in 0..3 {
        frame(source.as_mut(), &stop);
    }
    assert!(source.next_frame(&stop).unwrap().is_none());
}

#[test]
fn dicom_source_refuses_images_and_reports_bad_files() {
    let err = DicomCineSource::open(&fixture("images/rgb.png"), None, false)
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::NotDicom { .. }), "{err}");
    assert!(err.to_string().contains("rgb.png"), "{err}");
    let err = DicomCineSource::open(&fixture("dicom/corrupt.dcm"), None, false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("corrupt.dcm"), "{err}");
}

#[test]
fn a_missing_v4l2_device_is_a_clear_error_at_open() {
    let config = SourceConfig::from_spec("v4l2:/nonexistent/video9").unwrap();
    assert_eq!(config.kind, SourceKind::V4l2);
    let err = open(&config).err().unwrap();
    let text = err.to_string();
    assert!(
        text.starts_with("/nonexistent/video9: cannot open V4L2 device: "),
        "{text}"
    );
    assert!(text.contains("No such file"), "{text}");

    // a kernel answers the capability query on /dev/null with ENOTTY; a user-mode emulator
    // (qemu running the cross-built tests) may answer ENOSYS instead
    let err = open(&SourceConfig::from_spec("v4l2:/dev/null").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err == "/dev/null: not a V4L2 device"
            || err.starts_with("/dev/null: cannot open V4L2 device: Function not implemented"),
        "{err}"
    );
}

#[test]
fn a_lost_v4l2_device_is_retried_with_back_off_until_stop() {
    let mut source = V4l2Source::new(V4l2Settings {
        device: PathBuf::from("/nonexistent/video9"),
        width: 640,
        height: 480,
        format: PixelFormat::Mjpeg,
        interval: None,
    });
    assert_eq!(
        source.describe(),
        "V4L2 /nonexistent/video9 640x480 mjpeg at the device's rate"
    );
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    for _ in 0..5 {
        let err = source.next_frame(&stop).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/video9"), "{err}");
    }
    // attempts at once, then after 100, 200, 400 and 800 ms
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // the next attempt waits 1.6 s; stop ends that wait early
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
        });
        assert!(source.next_frame(&stop).unwrap().is_none());
    });
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}
