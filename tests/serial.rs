//! The serial link end to end over real pseudo-terminals (`openpty`): the sink writes to the
//! terminal side as it would to a UART, and the test reads the other side or hands it to the
//! listener. Covers the round trip, a receiver that starts mid-frame, a corrupted byte, heartbeats,
//! and a port that disappears and comes back behind the same path.

use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use edgeseg::frame::{Frame, Mask};
use edgeseg::protocol::{self, Message, Payload};
use edgeseg::serial::{listen, listen_port, SerialConfig, SerialSink};
use edgeseg::sink::{Counters, Emitted, Sink, Timestamps};

/// Longest any wait in these tests may take before it counts as a failure.
const DEADLINE: Duration = Duration::from_secs(5);

/// A pseudo-terminal pair: the test holds the master; `path` names the terminal side, which is
/// set to raw mode so bytes pass unchanged in both directions.
struct Pty {
    master: File,
    /// Kept open so the pair stays up until the test lets it go.
    slave: OwnedFd,
    path: PathBuf,
}

fn pty() -> Pty {
    let (mut master, mut slave) = (-1, -1);
    let null = std::ptr::null_mut();
    // SAFETY: openpty writes two descriptors; the optional arguments are null.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, null, null as _, null as _) };
    assert_eq!(rc, 0, "openpty: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    let mut name = [0 as libc::c_char; 256];
    // SAFETY: valid descriptor, termios and buffer of the stated length.
    unsafe {
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut termios), 0);
        libc::cfmakeraw(&mut termios);
        assert_eq!(
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios),
            0
        );
        assert_eq!(
            libc::ttyname_r(slave.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0
        );
    }
    // SAFETY: ttyname_r wrote a NUL-terminated string into `name`.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    Pty {
        master,
        slave,
        path: PathBuf::from(path.to_str().unwrap()),
    }
}

/// Reads the master side: waits at most 100 ms per read (then `TimedOut`, so the listener can
/// check its stop flag), and reports the end of the stream (EIO once every terminal-side
/// descriptor is closed and the data read) as end of input.
struct MasterReader<'a>(&'a File);

impl Read for MasterReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, 100) } == 0 {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut file: &File = self.0;
        match file.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

/// The next `count` messages on the master side (empty frames skipped).
fn read_messages(master: &File, count: usize) -> Vec<Message> {
    let start = Instant::now();
    let (mut messages, mut frame) = (Vec::new(), Vec::new());
    let mut reader = MasterReader(master);
    let mut byte = [0u8; 1];
    while messages.len() < count {
        assert!(start.elapsed() < DEADLINE, "only {messages:?} arrived");
        match reader.read(&mut byte) {
            Ok(0) => panic!("end of stream after {messages:?}"),
            Ok(_) if byte[0] == 0 && frame.is_empty() => {}
            Ok(_) if byte[0] == 0 => {
                messages.push(protocol::decode(&frame).unwrap());
                frame.clear();
            }
            Ok(_) => frame.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
    messages
}

/// Everything the master side holds once the terminal side is closed.
fn drain(pty: Pty) -> Vec<u8> {
    drop(pty.slave);
    let mut bytes = Vec::new();
    let start = Instant::now();
    let mut reader = MasterReader(&pty.master);
    let mut buf = [0u8; 4096];
    loop {
        assert!(start.elapsed() < DEADLINE);
        match reader.read(&mut buf) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
}

fn ascii(picture: &str) -> Mask {
    let rows: Vec<&str> = picture
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let bits = rows
        .iter()
        .flat_map(|r| r.chars().map(|c| c == '#'))
        .collect();
    Mask::new(rows[0].len() as u32, rows.len() as u32, bits).unwrap()
}

fn rectangle(width: u32, height: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
    let bits = (0..width * height)
        .map(|i| (x0..x1).contains(&(i % width)) && (y0..y1).contains(&(i / width)))
        .collect();
    Mask::new(width, height, bits).unwrap()
}

fn emitted(seq: u64, mask: Mask) -> Emitted {
    let frame = Frame::from_gray(
        mask.width(),
        mask.height(),
        &vec![0; (mask.width() * mask.height()) as usize],
    )
    .unwrap();
    Emitted {
        seq,
        timestamps: Timestamps {
            capture_us: 1000 * seq + 7,
            ..Timestamps::default()
        },
        frame: Arc::new(frame),
        area_px: mask.area(),
        mask: Arc::new(mask),
        label: "lesion".into(),
        area_mm2: None,
        counters: Counters {
            captured: seq + 1,
            processed: seq + 1,
            dropped: 0,
        },
        fps: 30.0,
        latency_ms: 0.0,
    }
}

fn small() -> Mask {
    ascii(".##.\n....")
}

/// A sink on `path` whose periodic heartbeat never comes due during a test.
fn config(path: impl Into<PathBuf>) -> SerialConfig {
    SerialConfig {
        heartbeat_ms: 60_000,
        ..SerialConfig::new(path)
    }
}

fn listen_to_string(input: impl Read) -> String {
    let mut out = Vec::new();
    listen(input, &mut out, &AtomicBool::new(false)).unwrap();
    String::from_utf8(out).unwrap()
}

/// A `Write` that hands every write to a channel, so a test can wait for lines with a timeout.
struct Lines(mpsc::Sender<Vec<u8>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The receiver may have stopped waiting; the listener goes on regardless.
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits for `count` complete lines from a [`Lines`] channel.
fn wait_lines(rx: &mpsc::Receiver<Vec<u8>>, text: &mut String, count: usize) {
    let start = Instant::now();
    while text.lines().count() < count || !text.ends_with('\n') {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(bytes) => text.push_str(&String::from_utf8(bytes).unwrap()),
            Err(_) => panic!("waited for {count} lines, got:\n{text}"),
        }
    }
}

#[test]
fn masks_and_status_arrive_line_for_line() {
    let pty = pty();
    let mut sink = SerialSink::open(config(&pty.path)).unwrap();
    assert_eq!(sink.name(), "serial");
    sink.emit(&emitted(0, small())).unwrap();
    sink.emit(&emitted(1, ascii("##..##\n.####.\n......")))
        .unwrap();
    // 100 rows of runs (600 bytes) do not fit 115200 baud at 30 fps; the rectangle's four
    // corners do.
    sink.emit(&emitted(3, rectangle(200, 100, 40, 10, 160, 90)))
        .unwrap();
    sink.finish(Counters {
        captured: 4,
        processed: 3,
        dropped: 1,
    })
    .unwrap();
    drop(sink);
    let text = listen_to_string(io::Cursor::new(drain(pty)));
    assert_eq!(
        text,
        "mask seq=0 capture_us=7 size=4x2 encoding=rle bytes=38 area_px=2 lost=0\n\
         mask seq=1 capture_us=1007 size=6x3 encoding=rle bytes=48 area_px=8 lost=0\n\
         mask seq=3 capture_us=3007 size=200x100 encoding=contour bytes=50 area_px=9600 lost=1\n\
         status seq=3 capture_us=3007 bytes=38 processed=3 dropped=1\n\
         summary: messages=4 masks=3 status=1 rejected=0 lost=1 skipped_bytes=0\n"
    );
}

#[test]
fn a_receiver_that_starts_mid_frame_skips_to_the_next_delimiter() {
    let pty = pty();
    let mut sink = SerialSink::open(config(&pty.path)).unwrap();
    for seq in 0..3 {
        sink.emit(&emitted(seq, small())).unwrap();
    }
    drop(sink);
    // Let the listener read the master directly, after ten bytes went by unseen: the sink's
    // leading delimiter and nine bytes of the first 38-byte frame.
    let mut missed = [0u8; 10];
    MasterReader(&pty.master).read_exact(&mut missed).unwrap();
    drop(pty.slave);
    let text = listen_to_string(MasterReader(&pty.master));
    assert_eq!(
        text,
        "skipped 28 bytes before the first delimiter (started mid-frame)\n\
         mask seq=1 capture_us=1007 size=4x2 encoding=rle bytes=38 area_px=2 lost=0\n\
         mask seq=2 capture_us=2007 size=4x2 encoding=rle bytes=38 area_px=2 lost=0\n\
         summary: messages=2 masks=2 status=0 rejected=0 lost=0 skipped_bytes=28\n"
    );
}

#[test]
fn a_corrupted_frame_is_rejected_and_the_next_one_decodes() {
    let link = pty();
    let mut sink = SerialSink::open(config(&link.path)).unwrap();
    for seq in 0..3 {
        sink.emit(&emitted(seq, small())).unwrap();
    }
    drop(sink);
    let mut bytes = drain(link);
    // Flip one bit in the middle of the second frame (1 leading delimiter + 38 bytes of the
    // first frame before it).
    let at = 1 + 38 + 20;
    bytes[at] ^= if bytes[at] == 1 { 2 } else { 1 };

    // The listener reads another terminal by its path, as `edgeseg listen --port` does.
    let receiver = pty();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let listener = {
        let (path, stop) = (receiver.path.clone(), Arc::clone(&stop));
        std::thread::spawn(move || listen_port(&path, 115_200, Lines(tx), &stop))
    };
    (&receiver.master).write_all(&bytes).unwrap();
    let mut text = String::new();
    wait_lines(&rx, &mut text, 3);
    stop.store(true, Ordering::Relaxed);
    let summary = listener.join().unwrap().unwrap();
    wait_lines(&rx, &mut text, 4);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "mask seq=0 capture_us=7 size=4x2 encoding=rle bytes=38 area_px=2 lost=0"
    );
    assert!(lines[1].starts_with("rejected 38 bytes: "), "{text}");
    assert_eq!(
        lines[2],
        "mask seq=2 capture_us=2007 size=4x2 encoding=rle bytes=38 area_px=2 lost=1"
    );
    assert_eq!(
        lines[3],
        "summary: messages=2 masks=2 status=0 rejected=1 lost=1 skipped_bytes=0"
    );
    assert_eq!((summary.rejected, summary.lost), (1, 1));
}

#[test]
fn heartbeats_follow_the_period() {
    let pty = pty();
    let config = SerialConfig {
        heartbeat_ms: 1,
        ..SerialConfig::new(&pty.path)
    };
    let mut sink = SerialSink::open(config).unwrap();
    // The period is 1 ms: after 3 ms each call owes exactly one status message.
    std::thread::sleep(Duration::from_millis(3));
    sink.emit(&emitted(4, small())).unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let counters = Counters {
        captured: 9,
        processed: 5,
        dropped: 4,
    };
    sink.idle(counters).unwrap();
    let messages = read_messages(&pty.master, 3);
    assert!(matches!(messages[0].payload, Payload::Rle(_)));
    assert_eq!(
        messages[1].payload,
        Payload::Status {
            processed: 5,
            dropped: 0
        }
    );
    assert_eq!(
        (
            &messages[2].payload,
            messages[2].seq,
            messages[2].capture_us
        ),
        (
            &Payload::Status {
                processed: 5,
                dropped: 4
            },
            4,
            4007
        )
    );
}

#[test]
fn a_port_that_disappears_is_reported_and_reopened() {
    let dir = std::env::temp_dir().join(format!("edgeseg-serial-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("ttyLINK");
    let _ = fs::remove_file(&link);
    let first = pty();
    symlink(&first.path, &link).unwrap();
    let config = SerialConfig {
        reconnect_min_ms: 0,
        reconnect_max_ms: 0,
        ..config(&link)
    };
    let mut sink = SerialSink::open(config).unwrap();
    sink.emit(&emitted(0, small())).unwrap();
    assert_eq!(read_messages(&first.master, 1)[0].seq, 0);

    // Unplugged: the device goes away and so does its name.
    drop(first);
    fs::remove_file(&link).unwrap();
    let err = sink.emit(&emitted(1, small())).unwrap_err().to_string();
    let lost = format!("serial port {} lost: ", link.display());
    assert!(
        err.starts_with(&lost) && err.ends_with("; reconnecting"),
        "{err}"
    );
    assert!(!sink.is_connected());
    // Opening a missing path fails at once; the bound only leaves room for a loaded machine.
    let start = Instant::now();
    let err = sink.emit(&emitted(2, small())).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_millis(250));
    assert!(err.contains("not connected (cannot open: "), "{err}");

    // Plugged in again under the same name.
    let second = pty();
    symlink(&second.path, &link).unwrap();
    sink.emit(&emitted(3, small())).unwrap();
    assert!(sink.is_connected());
    sink.finish(Counters {
        captured: 4,
        processed: 4,
        dropped: 0,
    })
    .unwrap();
    let messages = read_messages(&second.master, 2);
    assert_eq!(messages[0].seq, 3);
    assert_eq!(
        messages[1].payload,
        Payload::Status {
            processed: 4,
            dropped: 0
        }
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_absent_port_waits_with_back_off_without_blocking() {
    let missing = std::env::temp_dir().join(format!("edgeseg-no-tty-{}", std::process::id()));
    let config = SerialConfig {
        // Long enough that the second call always falls inside the first wait.
        reconnect_min_ms: 10_000,
        reconnect_max_ms: 40_000,
        ..config(&missing)
    };
    let err = SerialSink::open(config.clone()).err().unwrap().to_string();
    assert!(err.contains("cannot open"), "{err}");

    let mut sink = SerialSink::new(config).unwrap();
    let start = Instant::now();
    let err = sink.emit(&emitted(0, small())).unwrap_err().to_string();
    assert!(
        err.contains("not connected (cannot open: ") && err.ends_with("next attempt in 10000 ms"),
        "{err}"
    );
    let err = sink.emit(&emitted(1, small())).unwrap_err().to_string();
    assert!(
        err.contains("not connected (waiting before the next attempt)"),
        "{err}"
    );
    sink.idle(Counters::default()).unwrap();
    assert!(start.elapsed() < Duration::from_millis(250));
    let err = sink.finish(Counters::default()).unwrap_err().to_string();
    assert!(err.contains("cannot open"), "{err}");
}

#[test]
fn bad_configurations_are_refused() {
    let config = SerialConfig {
        baud: 0,
        ..SerialConfig::new("/dev/null")
    };
    let err = SerialSink::new(config).err().unwrap().to_string();
    assert!(err.contains("baud must be above 0"), "{err}");
    // A path that is not a terminal.
    let err = SerialSink::open(SerialConfig::new("/dev/null"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("serial port /dev/null: cannot open"),
        "{err}"
    );
}
