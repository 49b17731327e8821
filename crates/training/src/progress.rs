//! Training progress: a bar with ETA on a terminal, plain `tracing` lines otherwise.

use std::io::IsTerminal;

use crate::metrics::TrainLine;

/// A bar with ETA on a terminal, plain `tracing` lines otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

pub(crate) fn make_progress(total: Option<u64>, start: u64) -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress { bar: None };
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    Progress { bar: Some(bar) }
}

impl Progress {
    pub(crate) fn report(&self, line: &TrainLine, every: u64) {
        let value = |v: Option<f64>| v.unwrap_or(f64::NAN);
        let (loss, lr, tokens_per_s) = (value(line.loss), value(line.lr), value(line.tokens_per_s));
        match &self.bar {
            Some(bar) => {
                bar.set_position(line.step);
                bar.set_message(format!(
                    "loss {loss:.4} | {tokens_per_s:.0} tok/s | lr {lr:.2e}"
                ));
            }
            None => {
                if line.step == 1 || line.step.is_multiple_of(every.max(1)) {
                    tracing::info!(
                        "step {} | loss {loss:.4} | lr {lr:.2e} | grad norm {:.3} | {tokens_per_s:.0} tok/s | {:.1} ms/step",
                        line.step,
                        value(line.grad_norm),
                        value(line.step_time_s) * 1e3
                    );
                }
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
