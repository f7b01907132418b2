//! Helpers shared by the command-line test crates (`cli`, `families`): run the built binary
//! from the repository root, scratch folders, and the one-error-line failure check.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `edgeseg` with `args` from the repository root.
pub fn edgeseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeseg"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("edgeseg runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Standard output then standard error, for assertion messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

/// A fresh scratch folder for one test, named after the test crate and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "edgeseg-{}-{name}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts a failed run: exit code, no panic, and exactly one error line containing every
/// needle.
pub fn check_failure(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(!err.contains("panicked"), "panic: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {err}");
    for n in needles {
        assert!(errors[0].contains(n), "`{}` lacks `{n}`", errors[0]);
    }
}
