//! Learning rate as a pure function of the step: linear warm-up, then cosine or linear decay to
//! a floor, then constant.

use crate::config::{Decay, ScheduleConfig};

/// Learning rate at optimiser step `step` (counted from 1) of a run of `total_steps` steps.
///
/// The run enters the schedule at `start_step` (0 unless it continues another run's schedule):
/// its step `t` is the schedule's step `start_step + t`, of `start_step + total_steps`.
/// Warm-up climbs linearly from `peak / warmup` at step 1 to `peak` at step `warmup` (never 0:
/// a zero first step would waste a batch). Decay runs from the end of warm-up to
/// `decay_steps` (default the schedule's last step), reaching `min_lr_ratio · peak`, and stays
/// there.
pub fn learning_rate(schedule: &ScheduleConfig, peak: f64, step: u64, total_steps: u64) -> f64 {
    let step = schedule.start_step + step;
    let total_steps = schedule.start_step + total_steps;
    let warmup = schedule.warmup_steps;
    if step <= warmup {
        return peak * step.max(1) as f64 / warmup as f64;
    }
    let floor = peak * schedule.min_lr_ratio;
    let end = schedule.decay_steps.unwrap_or(total_steps).max(warmup + 1);
    if step >= end {
        return match schedule.decay {
            Decay::Constant => peak,
            _ => floor,
        };
    }
    let progress = (step - warmup) as f64 / (end - warmup) as f64; // (0, 1)
    match schedule.decay {
        Decay::Constant => peak,
        Decay::Linear => peak - (peak - floor) * progress,
        Decay::Cosine => {
            floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: Decay, warmup: u64) -> ScheduleConfig {
        ScheduleConfig {
            warmup_steps: warmup,
            decay,
            min_lr_ratio: 0.1,
            decay_steps: None,
            start_step: 0,
        }
    }

    #[test]
    fn warmup_is_linear_and_starts_above_zero() {
        let s = sched(Decay::Cosine, 10);
        assert!((learning_rate(&s, 1.0, 1, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 5, 100) - 0.5).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 10, 100) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn decays_reach_the_floor_and_stay() {
        for decay in [Decay::Cosine, Decay::Linear] {
            let s = sched(decay, 10);
            let mid = learning_rate(&s, 1.0, 55, 100);
            assert!((mid - 0.55).abs() < 1e-9, "{decay:?}: {mid}");
            assert!((learning_rate(&s, 1.0, 100, 100) - 0.1).abs() < 1e-12);
            assert!((learning_rate(&s, 1.0, 500, 100) - 0.1).abs() < 1e-12);
            let mut last = f64::INFINITY;
            for step in 10..=100 {
                let lr = learning_rate(&s, 1.0, step, 100);
                assert!(lr <= last + 1e-15);
                last = lr;
            }
        }
    }

    #[test]
    fn paper_schedule_decays_to_a_tenth_then_constant() {
        let s = ScheduleConfig {
            decay_steps: Some(50),
            ..sched(Decay::Linear, 5)
        };
        assert!((learning_rate(&s, 2.0, 50, 100) - 0.2).abs() < 1e-12);
        assert!((learning_rate(&s, 2.0, 80, 100) - 0.2).abs() < 1e-12);
        assert_eq!(learning_rate(&sched(Decay::Constant, 0), 2.0, 80, 100), 2.0);
    }

    #[test]
    fn a_run_that_starts_into_the_schedule_continues_it() {
        // A 100-step schedule taken as 40 + 60: the second run's steps are the first's 41..=100.
        let whole = sched(Decay::Cosine, 10);
        let continued = ScheduleConfig {
            start_step: 40,
            ..whole.clone()
        };
        for t in 1..=60 {
            let a = learning_rate(&whole, 1.0, 40 + t, 100);
            let b = learning_rate(&continued, 1.0, t, 60);
            assert!((a - b).abs() < 1e-15, "step {t}: {a} vs {b}");
        }
        // Past the warm-up from its first step.
        assert!(learning_rate(&continued, 1.0, 1, 60) > 0.5);
        // 0 keeps the file as it was.
        let text = toml::to_string(&whole).unwrap();
        assert!(!text.contains("start_step"), "{text}");
    }
}
