//! Atomic file writes: a temporary file in the same directory, fsync, rename.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ReportError;

/// A temporary path next to `path` (same directory), ending in `.{ext}`.
pub(crate) fn temp_path(path: &Path, ext: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    path.with_file_name(format!(".{name}.tmp-{}.{ext}", std::process::id()))
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
}
