//! Fixtures shared by the end-to-end tests of the `hyperclone` binary: the command, the
//! shipped configs made to train on two small books with every output in a test folder, and
//! waiting for and killing child processes.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `hyperclone` binary, logging at info, without backtraces.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyperclone"));
    c.env("RUST_LOG", "info").env_remove("RUST_BACKTRACE");
    c
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped config `configs/{name}` with its paths made test-local: it trains on two small
/// books (the shipped val split, 5 % held out, so that preparing takes a fraction of a
/// second), reads the shipped tokenizer, and writes its prepared data to `dir/data` and an
/// experiment's output (`out = "runs/tiny"`) to `dir/exp`.
pub fn local_config_text(name: &str, dir: &Path) -> String {
    let root = repo();
    std::fs::read_to_string(root.join("configs").join(name))
        .unwrap()
        .replace(
            "train = [\"datasets/gutenberg/train\"]\nval = [\"datasets/gutenberg/val\"]",
            &format!(
                "train = [\"{}/datasets/gutenberg/val\"]\nval_fraction = 0.05",
                root.display()
            ),
        )
        .replace(
            "datasets/gutenberg/tokenizer-4096.json",
            &format!("{}/datasets/gutenberg/tokenizer-4096.json", root.display()),
        )
        .replace(
            "out = \"runs/data/gutenberg-4096\"",
            &format!("out = \"{}/data\"", dir.display()),
        )
        .replace(
            "out = \"runs/tiny\"",
            &format!("out = \"{}/exp\"", dir.display()),
        )
}

/// Writes `text` to `dir/file` and returns the path.
pub fn write_config(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// The tiny experiment (`configs/tiny.toml`) with every output inside `dir`.
pub fn tiny_experiment(dir: &Path) -> PathBuf {
    write_config(dir, "tiny.toml", &local_config_text("tiny.toml", dir))
}

/// `configs/train-tiny.toml` with every output inside `dir`.
pub fn tiny_train_config(dir: &Path) -> PathBuf {
    write_config(
        dir,
        "train.toml",
        &local_config_text("train-tiny.toml", dir),
    )
}

/// Runs `cmd` and fails the test, with its output, unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `cond` until it holds (at most 300 s); fails if `child` exits first.
pub fn wait_for(child: &mut Child, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process exited ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `child` with SIGKILL: no destructors, no flush — a real crash.
pub fn kill9(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

/// A JSON file, parsed.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
