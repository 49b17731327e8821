//! Line charts written as PNG and SVG with plotters, using a font embedded in the crate
//! (DejaVu Sans, see `fonts/`), so no system font is needed.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::ReportError;
use crate::fsutil::{temp_path, write_atomic};

/// DejaVu Sans 2.37 (Bitstream Vera licence; `fonts/LICENSE-DejaVu.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// The family name the embedded font is registered under.
const FONT_FAMILY: &str = "sans-serif";

/// Pixel size of every chart.
const SIZE: (u32, u32) = (1000, 620);

/// Registers the embedded font with plotters once per process.
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
}

/// How a series' line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dash {
    /// A solid line.
    Solid,
    /// A dashed line.
    Dashed,
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry; `None` for no entry (e.g. the second seed of the same role).
    pub label: Option<String>,
    /// RGB colour.
    pub color: (u8, u8, u8),
    /// Solid or dashed.
    pub dash: Dash,
    /// Line width in pixels.
    pub width: u32,
    /// Whether to mark each point with a dot.
    pub markers: bool,
    /// The points, ascending in x.
    pub points: Vec<(f64, f64)>,
}

/// A horizontal reference line (e.g. the baseline's final val loss).
#[derive(Debug, Clone)]
pub struct HLine {
    /// Its y value.
    pub y: f64,
    /// Legend entry.
    pub label: String,
    /// RGB colour.
    pub color: (u8, u8, u8),
}

/// A whole chart.
#[derive(Debug, Clone)]
pub struct ChartSpec {
    /// Title drawn above the chart.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// Logarithmic x axis (points with x ≤ 0 are left out).
    pub log_x: bool,
    /// When set, the top of the y axis is cut to hide the steep first part of the curves:
    /// it is the highest value any series has at this fraction of its own x span.
    pub y_focus: Option<f64>,
    /// The lines.
    pub series: Vec<Series>,
    /// Horizontal reference lines.
    pub hlines: Vec<HLine>,
}

/// The files written for one chart.
#[derive(Debug, Clone)]
pub struct PlotFiles {
    /// The PNG file.
    pub png: PathBuf,
    /// The SVG file.
    pub svg: PathBuf,
    /// The PNG's bytes (for embedding).
    pub png_bytes: Vec<u8>,
}

/// Draws `spec` into `<dir>/<stem>.png` and `<dir>/<stem>.svg` (each written atomically).
pub fn render(spec: &ChartSpec, dir: &Path, stem: &str) -> Result<PlotFiles, ReportError> {
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let plot_err = |path: &Path, message: String| ReportError::Plot {
        path: path.to_path_buf(),
        message,
    };
    ensure_font().map_err(|m| plot_err(&png, m))?;
    let prepared = prepare(spec);

    // PNG: plotters' encoder picks the format from the extension, so the temporary file in
    // the same directory keeps `.png` at the end; it is fsynced and renamed into place.
    let tmp_png = temp_path(&png, "png");
    {
        let root = BitMapBackend::new(&tmp_png, SIZE).into_drawing_area();
        draw(&root, spec, &prepared).map_err(|m| plot_err(&png, m))?;
        root.present().map_err(|e| plot_err(&png, e.to_string()))?;
    }
    let png_bytes = std::fs::read(&tmp_png).map_err(|e| ReportError::io("reading", &tmp_png, e))?;
    let _ = std::fs::remove_file(&tmp_png);
    write_atomic(&png, &png_bytes)?;

    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, SIZE).into_drawing_area();
        draw(&root, spec, &prepared).map_err(|m| plot_err(&svg, m))?;
        root.present().map_err(|e| plot_err(&svg, e.to_string()))?;
    }
    write_atomic(&svg, svg_text.as_bytes())?;
    Ok(PlotFiles {
        png,
        svg,
        png_bytes,
    })
}

/// Axis ranges and the series clipped to them.
struct Prepared {
    x: Range<f64>,
    y: Range<f64>,
    /// Per series: its visible pieces (a line leaving the y range is split).
    pieces: Vec<Vec<Vec<(f64, f64)>>>,
}

fn prepare(spec: &ChartSpec) -> Prepared {
    let usable = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite() && (!spec.log_x || p.0 > 0.0);
    let series: Vec<Vec<(f64, f64)>> = spec
        .series
        .iter()
        .map(|s| s.points.iter().copied().filter(usable).collect())
        .collect();
    let all = || series.iter().flatten();
    let (mut x0, mut x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (mut y0, mut y1) = all()
        .map(|p| p.1)
        .chain(spec.hlines.iter().map(|h| h.y))
        .filter(|y| y.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
    if !x0.is_finite() {
        (x0, x1) = if spec.log_x { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if let Some(fraction) = spec.y_focus {
        let mut top = f64::NEG_INFINITY;
        for s in &series {
            if let Some(v) = value_at_fraction(s, fraction, spec.log_x) {
                top = top.max(v);
            }
        }
        for h in &spec.hlines {
            top = top.max(h.y);
        }
        if top.is_finite() && top > y0 {
            y1 = y1.min(top);
        }
    }
    if x1 <= x0 {
        x1 = if spec.log_x { x0 * 10.0 } else { x0 + 1.0 };
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (x0, x1) = if spec.log_x {
        (x0 / 1.15, x1 * 1.15)
    } else {
        let pad = (x1 - x0) * 0.02;
        (
            if x0 >= 0.0 {
                (x0 - pad).max(0.0)
            } else {
                x0 - pad
            },
            x1 + pad,
        )
    };
    let pieces = series.iter().map(|s| clip_y(s, y0, y1)).collect();
    Prepared {
        x: x0..x1,
        y: y0..y1,
        pieces,
    }
}

/// The series' y at `fraction` of its x span (in log space for a log axis).
fn value_at_fraction(points: &[(f64, f64)], fraction: f64, log_x: bool) -> Option<f64> {
    let (first, last) = (points.first()?, points.last()?);
    let target = if log_x {
        (first.0.ln() + fraction * (last.0.ln() - first.0.ln())).exp()
    } else {
        first.0 + fraction * (last.0 - first.0)
    };
    let curve: Vec<(f64, f64)> = points.to_vec();
    crate::analysis::value_at(&curve, target.clamp(first.0, last.0))
}

/// Splits a polyline into the pieces inside `y0 ≤ y ≤ y1`, cutting segments at the border.
fn clip_y(points: &[(f64, f64)], y0: f64, y1: f64) -> Vec<Vec<(f64, f64)>> {
    let inside = |y: f64| y >= y0 && y <= y1;
    let cut = |a: (f64, f64), b: (f64, f64), y: f64| {
        let t = (y - a.1) / (b.1 - a.1);
        (a.0 + t * (b.0 - a.0), y)
    };
    let mut pieces = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for (i, &p) in points.iter().enumerate() {
        if i > 0 {
            let q = points[i - 1];
            // Border crossings between q and p, in order along the segment.
            let mut crossings: Vec<(f64, f64)> = Vec::new();
            for border in [y0, y1] {
                if (q.1 - border) * (p.1 - border) < 0.0 {
                    crossings.push(cut(q, p, border));
                }
            }
            if crossings.len() == 2 && (crossings[0].0 - q.0).abs() > (crossings[1].0 - q.0).abs() {
                crossings.swap(0, 1);
            }
            for c in crossings {
                if current.is_empty() {
                    current.push(c);
                } else {
                    current.push(c);
                    pieces.push(std::mem::take(&mut current));
                }
            }
        }
        if inside(p.1) {
            current.push(p);
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Compact tick label: plain decimals in a readable range, else scientific notation.
pub fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if !(1e-3..1e4).contains(&a) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    let decimals = if a >= 100.0 {
        0
    } else if a >= 1.0 {
        2
    } else {
        (-(a.log10().floor()) as usize) + 2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Tick positions for a log axis: labelled ticks at m·10^k for the densest mantissa set that
/// gives at most 10 of them, and light grid lines at 1..9·10^k.
fn log_ticks(range: Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let (lo, hi) = (
        range.start.max(f64::MIN_POSITIVE),
        range.end.max(range.start),
    );
    let k0 = lo.log10().floor() as i32;
    let k1 = hi.log10().ceil() as i32;
    let within = |mantissas: &[f64]| -> Vec<f64> {
        (k0..=k1)
            .flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|v| *v >= lo && *v <= hi)
            .collect()
    };
    let mut bold = Vec::new();
    for set in [&[1.0, 2.0, 3.0, 5.0, 7.0][..], &[1.0, 2.0, 5.0], &[1.0]] {
        bold = within(set);
        if bold.len() <= 10 {
            break;
        }
    }
    if bold.len() > 10 {
        // Many decades: every n-th power of ten.
        let step = bold.len().div_ceil(10);
        bold = bold.into_iter().step_by(step).collect();
    }
    let light = within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    (bold, light)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    spec: &ChartSpec,
    prepared: &Prepared,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let y = RangedCoordf64::from(prepared.y.clone());
    if spec.log_x {
        let (bold, light) = log_ticks(prepared.x.clone());
        let x = LogCoord::from(prepared.x.clone().log_scale())
            .with_key_points(bold)
            .with_light_points(light);
        draw_with(root, spec, prepared, x, y)
    } else {
        let x = RangedCoordf64::from(prepared.x.clone());
        draw_with(root, spec, prepared, x, y)
    }
}

fn draw_with<DB, X>(
    root: &DrawingArea<DB, Shift>,
    spec: &ChartSpec,
    prepared: &Prepared,
    x: X,
    y: RangedCoordf64,
) -> Result<(), String>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| err.to_string();
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, (FONT_FAMILY, 24))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(78)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(&spec.x_label)
        .y_desc(&spec.y_label)
        .axis_desc_style((FONT_FAMILY, 18))
        .label_style((FONT_FAMILY, 14))
        .x_labels(if spec.log_x { 12 } else { 8 })
        .y_labels(8)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(e)?;

    let x_range = prepared.x.clone();
    for h in &spec.hlines {
        let color = RGBColor(h.color.0, h.color.1, h.color.2);
        let style = ShapeStyle::from(color).stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_range.start, h.y), (x_range.end, h.y)],
                6,
                4,
                style,
            ))
            .map_err(e)?
            .label(h.label.clone())
            .legend(move |(px, py)| PathElement::new(vec![(px, py), (px + 12, py)], style));
    }

    for (series, pieces) in spec.series.iter().zip(&prepared.pieces) {
        let color = RGBColor(series.color.0, series.color.1, series.color.2);
        let style = ShapeStyle::from(color).stroke_width(series.width);
        let mut labelled = false;
        for piece in pieces {
            let anno = match series.dash {
                Dash::Solid => chart
                    .draw_series(LineSeries::new(piece.iter().copied(), style))
                    .map_err(e)?,
                Dash::Dashed => chart
                    .draw_series(DashedLineSeries::new(piece.iter().copied(), 10, 6, style))
                    .map_err(e)?,
            };
            if let (Some(label), false) = (&series.label, labelled) {
                let dash = series.dash;
                anno.label(label.clone()).legend(move |(px, py)| {
                    let legend_style = ShapeStyle::from(color).stroke_width(3);
                    match dash {
                        Dash::Solid => {
                            PathElement::new(vec![(px, py), (px + 24, py)], legend_style)
                        }
                        Dash::Dashed => {
                            PathElement::new(vec![(px, py), (px + 10, py)], legend_style)
                        }
                    }
                });
                labelled = true;
            }
            if series.markers {
                chart
                    .draw_series(
                        piece
                            .iter()
                            .map(|&p| Circle::new(p, 3, ShapeStyle::from(color).filled())),
                    )
                    .map_err(e)?;
            }
        }
    }

    if spec.series.iter().any(|s| s.label.is_some()) || !spec.hlines.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FONT_FAMILY, 15))
            .draw()
            .map_err(e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_splits_at_the_top_border() {
        let pieces = clip_y(&[(0.0, 10.0), (1.0, 4.0), (2.0, 3.0)], 2.0, 6.0);
        assert_eq!(pieces.len(), 1);
        let first = pieces[0][0];
        // 10 → 4 over x 0..1 crosses 6 at x = 4/6.
        assert!((first.0 - 4.0 / 6.0).abs() < 1e-12 && first.1 == 6.0);
        assert_eq!(pieces[0].len(), 3);
        // A curve leaving and re-entering the range gives two pieces.
        let pieces = clip_y(&[(0.0, 3.0), (1.0, 8.0), (2.0, 3.0)], 2.0, 6.0);
        assert_eq!(pieces.len(), 2);
    }

    #[test]
    fn log_ticks_pick_round_values() {
        let (bold, light) = log_ticks(8_000.0..450_000.0);
        assert_eq!(bold, vec![1e4, 2e4, 3e4, 5e4, 7e4, 1e5, 2e5, 3e5]);
        assert_eq!(light.first(), Some(&8_000.0));
        assert_eq!(light.last(), Some(&400_000.0));
        let (bold, _) = log_ticks(1e3..2e4);
        assert_eq!(bold, vec![1e3, 2e3, 3e3, 5e3, 7e3, 1e4, 2e4]);
        let (bold, _) = log_ticks(1.0..1e30);
        assert!(bold.len() <= 10 && bold[0] == 1.0);
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(150.0), "150");
        assert_eq!(tick_label(5000.0), "5000");
        assert_eq!(tick_label(20000.0), "2e4");
        assert_eq!(tick_label(0.0125), "0.0125");
        assert_eq!(tick_label(3.0e15), "3e15");
        assert_eq!(tick_label(1.5e6), "1.5e6");
    }

    #[test]
    fn embedded_font_registers() {
        assert_eq!(ensure_font(), Ok(()));
    }
}
