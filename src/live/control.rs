//! The run's control channel: `adapter NAME` lines read from stdin or from a control file,
//! handed to the inference thread as adapter names (it switches between frames, see
//! [`super::stages::Stages::with_control`]).
//!
//! A control file is followed like `tail -f`: lines appended while the run goes on are read
//! every 50 ms, so another program (a cart's UI) can switch tasks by appending a line. The file
//! may appear after the run starts. Other lines are reported and ignored. The reader threads
//! are detached: they end with the process, or when stdin closes.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

/// Where control lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Stdin,
    File(PathBuf),
}

impl Control {
    /// `stdin` or a file path.
    pub fn parse(spec: &str) -> Control {
        if spec == "stdin" {
            Control::Stdin
        } else {
            Control::File(PathBuf::from(spec))
        }
    }
}

/// Starts reading `control`; adapter names arrive on the returned channel.
pub fn spawn(control: &Control) -> std::io::Result<Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    let spawned = match control.clone() {
        Control::Stdin => std::thread::Builder::new()
            .name("control-stdin".into())
            .spawn(move || read_lines(std::io::stdin().lock(), &tx)),
        Control::File(path) => std::thread::Builder::new()
            .name("control-file".into())
            .spawn(move || follow(&path, &tx)),
    };
    spawned.map(|_| rx)
}

/// Sends the adapter name of an `adapter NAME` line; reports any other non-empty line.
/// Returns false when the receiver is gone.
fn handle(line: &str, tx: &Sender<String>) -> bool {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (None, ..) => true,
        (Some("adapter"), Some(name), None) => tx.send(name.to_string()).is_ok(),
        _ => {
            log::warn!("control: ignored `{line}` (expected `adapter NAME`)");
            true
        }
    }
}

fn read_lines(reader: impl BufRead, tx: &Sender<String>) {
    for line in reader.lines() {
        match line {
            Ok(line) if handle(&line, tx) => {}
            Ok(_) => return,
            Err(e) => {
                log::warn!("control: stdin: {e}");
                return;
            }
        }
    }
}

/// Reads complete lines appended to `path`, polling; waits for the file to exist.
fn follow(path: &Path, tx: &Sender<String>) {
    let poll = Duration::from_millis(50);
    let mut offset = 0u64;
    let mut partial = String::new();
    loop {
        if let Ok(mut file) = File::open(path) {
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                let mut chunk = String::new();
                if let Ok(n) = file.read_to_string(&mut chunk) {
                    offset += n as u64;
                    partial.push_str(&chunk);
                    while let Some(end) = partial.find('\n') {
                        let line: String = partial.drain(..=end).collect();
                        if !handle(line.trim_end(), tx) {
                            return;
                        }
                    }
                }
            }
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn adapter_lines_become_names_and_others_are_ignored() {
        let (tx, rx) = mpsc::channel();
        read_lines(
            "adapter lesion\n\nhello\nadapter a b\nadapter polyp\n".as_bytes(),
            &tx,
        );
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec!["lesion", "polyp"]);
    }

    #[test]
    fn a_control_file_is_followed_as_it_grows() {
        let dir = std::env::temp_dir().join(format!("edgeseg-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control");
        let _ = std::fs::remove_file(&path);
        let rx = spawn(&Control::File(path.clone())).unwrap();
        let mut f = File::create(&path).unwrap();
        f.write_all(b"adapter lesion\nadapter po").unwrap();
        f.flush().unwrap();
        let wait = |rx: &Receiver<String>| rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(wait(&rx), "lesion");
        f.write_all(b"lyp\n").unwrap();
        assert_eq!(wait(&rx), "polyp");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
