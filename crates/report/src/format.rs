//! Number formatting for the report's text and tables.

use crate::analysis::Spread;

/// `v` with `n` significant digits, scientific notation outside [1e-4, 1e6).
pub fn sig(v: f64, n: usize) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let n = n.max(1);
    let a = v.abs();
    if !(1e-4..1e6).contains(&a) {
        return format!("{:.*e}", n - 1, v);
    }
    let magnitude = a.log10().floor() as i64;
    let decimals = (n as i64 - 1 - magnitude).max(0) as usize;
    format!("{v:.decimals$}")
}

/// A loss value (4 decimals).
pub fn loss(v: f64) -> String {
    format!("{v:.4}")
}

/// An optional loss value, "n/a" when absent.
pub fn loss_opt(v: Option<f64>) -> String {
    v.map(loss).unwrap_or_else(|| "n/a".to_string())
}

/// Device-hours (4 significant digits).
pub fn hours(v: f64) -> String {
    sig(v, 4)
}

/// FLOPs in scientific notation.
pub fn flops(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// A speedup factor; infinite means the target was met before any large-model training, which
/// is no factor at all and is written as such.
pub fn speedup(v: f64) -> String {
    if v.is_infinite() {
        "met at initialisation (no factor)".to_string()
    } else {
        format!("{v:.2}×")
    }
}

/// Mean over seeds with the range and the count, each number formatted by `f`:
/// `5.1234 (5.1100–5.1400, n=3)`; a single value alone.
pub fn spread(s: &Spread, f: impl Fn(f64) -> String) -> String {
    if s.n > 1 {
        format!("{} ({}–{}, n={})", f(s.mean), f(s.min), f(s.max), s.n)
    } else {
        f(s.mean)
    }
}

/// A speedup over seeds: the mean factor with its range and count (`2.61× (2.40–2.85×, n=3)`),
/// and how many seeds met the target at initialisation (no factor; left out of the mean).
pub fn speedup_spread(s: &Spread) -> String {
    if s.n == 0 {
        return speedup(f64::INFINITY);
    }
    let base = if s.n > 1 {
        format!(
            "{} ({:.2}–{}, n={})",
            speedup(s.mean),
            s.min,
            speedup(s.max),
            s.n
        )
    } else {
        speedup(s.mean)
    };
    if s.infinite > 0 {
        format!(
            "{base}; met at initialisation in {} more seed{} (no factor)",
            s.infinite,
            if s.infinite == 1 { "" } else { "s" }
        )
    } else {
        base
    }
}

/// A duration in seconds as "1 h 02 min", "3 min 12 s" or "12.3 s".
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "n/a".to_string();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    if h > 0 {
        format!("{h} h {m:02} min")
    } else {
        format!("{m} min {s:02} s")
    }
}

/// A byte count in MiB / GiB.
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

/// A large count (parameters, tokens) with a K/M/B suffix.
pub fn count(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2}B", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}K", v / 1e3)
    } else {
        n.to_string()
    }
}

/// A fraction as a percentage.
pub fn percent(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(sig(0.012345, 3), "0.0123");
        assert_eq!(sig(123.456, 4), "123.5");
        assert_eq!(sig(2.5e7, 3), "2.50e7");
        assert_eq!(speedup(2.0), "2.00×");
        assert_eq!(speedup(f64::INFINITY), "met at initialisation (no factor)");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(192.0), "3 min 12 s");
        assert_eq!(duration(3720.0), "1 h 02 min");
        assert_eq!(count(124_439_808), "124.44M");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        let s = Spread {
            n: 2,
            mean: 2.0,
            std: Some(0.5),
            min: 1.5,
            max: 2.5,
            infinite: 0,
        };
        assert_eq!(speedup_spread(&s), "2.00× (1.50–2.50×, n=2)");
        assert_eq!(spread(&s, loss), "2.0000 (1.5000–2.5000, n=2)");
        let with_inf = Spread { infinite: 1, ..s };
        assert_eq!(
            speedup_spread(&with_inf),
            "2.00× (1.50–2.50×, n=2); met at initialisation in 1 more seed (no factor)"
        );
        let one = Spread {
            n: 1,
            std: None,
            ..s
        };
        assert_eq!(speedup_spread(&one), "2.00×");
    }
}
