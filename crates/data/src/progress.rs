//! Progress of long work: an `indicatif` bar when stderr is a terminal, plain `tracing` lines
//! (every 10 %) otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Counts bytes of work done against a known total.
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
    next_log: Mutex<u64>,
    started: Instant,
}

impl Progress {
    /// Starts tracking `total` bytes of work named `label`.
    pub fn new(label: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>12} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar.set_message(label.to_string());
            bar
        });
        Progress {
            label: label.to_string(),
            total,
            done: AtomicU64::new(0),
            bar,
            next_log: Mutex::new(1),
            started: Instant::now(),
        }
    }

    /// Records `bytes` more of work done.
    pub fn inc(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            return;
        }
        if self.total == 0 {
            return;
        }
        let tenth = (done.saturating_mul(10) / self.total).min(10);
        if let Ok(mut next) = self.next_log.lock() {
            if tenth >= *next {
                *next = tenth + 1;
                let secs = self.started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(
                    "{}: {}% ({:.1} MB of {:.1} MB, {:.2} MB/s)",
                    self.label,
                    tenth * 10,
                    done as f64 / 1e6,
                    self.total as f64 / 1e6,
                    done as f64 / 1e6 / secs
                );
            }
        }
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Ends the bar (if any).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes() {
        let p = Progress::new("test", 100);
        p.inc(30);
        p.inc(80);
        assert_eq!(p.done(), 110);
        let z = Progress::new("zero", 0);
        z.inc(5);
        assert_eq!(z.done(), 5);
    }
}
