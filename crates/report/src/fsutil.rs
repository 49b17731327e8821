//! Atomic file writes: a temporary file in the same directory, fsync, rename.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ReportError;

/// A temporary path next to `path` (same directory), ending in `.{ext}`:
/// `.{name}.tmp-{pid}.{ext}`. Temporary files of `path` left by an earlier process that has
/// ended (a report killed mid-write) are removed first.
pub(crate) fn temp_path(path: &Path, ext: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    remove_stale_temps(path, &name);
    path.with_file_name(format!(".{name}.tmp-{}.{ext}", std::process::id()))
}

/// Removes `.{name}.tmp-{pid}.*` next to `path` for every `pid` other than ours whose process
/// is gone. Only where that can be told (Linux `/proc`): a live writer's file is never touched.
fn remove_stale_temps(path: &Path, name: &str) {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(".{name}.tmp-");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a
/// partial write.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let tmp = temp_path(path, "tmp");
    let result = (|| {
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| ReportError::io("creating", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| ReportError::io("writing", &tmp, e))?;
        file.sync_all()
            .map_err(|e| ReportError::io("syncing", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| ReportError::io("renaming into", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; a failure here does not lose the new content.
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.md");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// A report killed mid-write leaves `.{name}.tmp-{pid}.*` files; the next write of the same
    /// file removes those of ended processes, and nothing else.
    #[test]
    fn stale_temp_files_of_ended_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = child.id();
        let file = |n: &str| dir.path().join(n);
        let stale = [
            format!(".a.png.tmp-{dead}.tmp"),
            format!(".a.png.tmp-{dead}.png"),
        ];
        // pid 1 (init) lives; another target's temp file is not this write's to judge.
        let kept = [
            ".a.png.tmp-1.tmp".to_string(),
            format!(".b.png.tmp-{dead}.tmp"),
            "a.png.tmp-x".to_string(),
        ];
        for n in stale.iter().chain(&kept) {
            std::fs::write(file(n), b"partial").unwrap();
        }
        write_atomic(&file("a.png"), b"png").unwrap();
        assert_eq!(std::fs::read(file("a.png")).unwrap(), b"png");
        for n in &stale {
            assert!(!file(n).exists(), "{n} left behind");
        }
        for n in &kept {
            assert!(file(n).exists(), "{n} removed");
        }
    }
}
