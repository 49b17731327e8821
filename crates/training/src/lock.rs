//! An exclusive lock on a run directory: `run.lock`, an advisory file lock that also names its
//! holder (pid and host).
//!
//! Two trainings in one run directory would interleave `metrics.jsonl` and delete each other's
//! half-written checkpoints, so [`crate::train`] holds this lock for the whole run. The lock is
//! the operating system's (`flock`), released when its process ends however it ends; the
//! file's contents only say who holds it. A lock file that still names a holder although its
//! lock is free was left by a process that was killed: it is taken over, with a warning.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// Who holds (or held) a lock: what `run.lock` contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {}", self.pid, self.host)
    }
}

impl LockHolder {
    /// This process.
    pub fn this_process() -> Self {
        Self {
            pid: std::process::id(),
            host: host_name(),
        }
    }
}

/// Why a run directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("{path} is locked by {holder}: another training runs in this directory (wait for it to finish, or use another run directory)")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// Its holder, as the file names it (`unknown` when it does not).
        holder: String,
    },
    /// The lock file could not be created, read, written or locked.
    #[error("{path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The host name (Linux: the kernel's; elsewhere `$HOSTNAME`), or `unknown`.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Whether process `pid` runs on this host. Where that cannot be told (no `/proc`), it is
/// taken to run: a lock is never taken from a process that may be alive.
fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// The exclusive lock on a run directory, held until dropped. Dropping it empties the file
/// (a clean release names no holder) and releases the lock; the file stays, so that every
/// process locks the same file.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    taken_over: Option<LockHolder>,
}

fn read_holder(file: &mut File) -> std::io::Result<Option<LockHolder>> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    Ok(serde_json::from_str(&text).ok())
}

impl RunLock {
    /// Takes the lock of the existing directory `run_dir`, or fails naming its holder. A lock
    /// file left by a process that no longer holds it (killed) is taken over with a warning.
    pub fn acquire(run_dir: &Path) -> Result<Self, LockError> {
        let path = run_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let me = LockHolder::this_process();
        let taken_over = match file.try_lock() {
            Ok(()) => read_holder(&mut file).map_err(io)?,
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file)
                    .ok()
                    .flatten()
                    .map_or_else(|| "unknown".to_string(), |h| h.to_string());
                return Err(LockError::Held { path, holder });
            }
            // A file system without locks: judge by the pid the file names.
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(
                    "{}: file locks unavailable ({e}); judging by the recorded pid",
                    path.display()
                );
                match read_holder(&mut file).map_err(io)? {
                    Some(h) if h != me && (h.host != me.host || pid_alive(h.pid)) => {
                        return Err(LockError::Held {
                            path,
                            holder: h.to_string(),
                        })
                    }
                    other => other,
                }
            }
        };
        let taken_over = taken_over.filter(|h| *h != me);
        if let Some(h) = &taken_over {
            tracing::warn!(
                "taking over the stale lock {} of {h}: that process no longer holds it (killed?)",
                path.display()
            );
        }
        let json = serde_json::to_string(&me).expect("LockHolder serialises");
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(json.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self {
            file,
            path,
            taken_over,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The holder named by a stale lock file that this lock took over.
    pub fn taken_over(&self) -> Option<&LockHolder> {
        self.taken_over.as_ref()
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty first, then unlock: the next holder finds no stale name. (The directory may
        // be gone already: a run that failed before its first step removes what it made.)
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_free_again_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert!(lock.taken_over().is_none());
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        let holder: LockHolder = serde_json::from_str(&text).unwrap();
        assert_eq!(holder, LockHolder::this_process());
        // flock locks belong to the open file: a second open in this process conflicts too.
        let e = RunLock::acquire(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains(&holder.host)
                && msg.contains("run.lock"),
            "{msg}"
        );
        drop(lock);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            ""
        );
        let again = RunLock::acquire(dir.path()).unwrap();
        assert!(again.taken_over().is_none(), "a clean release is not stale");
    }

    #[test]
    fn a_stale_lock_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A process that has ended: its pid is free (or reused, which the flock tells apart).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = LockHolder {
            pid: child.id(),
            host: host_name(),
        };
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(lock.taken_over(), Some(&dead));
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(
            serde_json::from_str::<LockHolder>(&text).unwrap(),
            LockHolder::this_process()
        );
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = RunLock::acquire(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(e, LockError::Io { .. }));
        assert!(e.to_string().contains("absent/run.lock"), "{e}");
    }
}
