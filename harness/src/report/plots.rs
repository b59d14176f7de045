//! SVG plots drawn with `plotters` into strings: x-y line plots (latency and energy against
//! frequency, power traces) and horizontal bar charts (battery life per policy, switching
//! time against RT3's 45 ms).
//!
//! The functions take plain plot descriptions ([`XyPlot`], [`BarPlot`]) and return the SVG
//! text, so they are pure and deterministic: plotters' SVG backend writes coordinates with
//! Rust's float formatting, escapes text, and (without the `ttf` feature) measures text with
//! a fixed estimate rather than the fonts installed on the machine. The same input gives the
//! same bytes on every host.

use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;

/// Plot size in pixels; the HTML scales plots down to the page width.
pub const WIDTH: u32 = 820;
pub const HEIGHT: u32 = 460;

/// Tableau 10: distinguishable, and readable by most colour-blind readers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series `i` (variants keep one colour across all plots of a report).
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot \"{plot}\": {message}")]
pub struct PlotError {
    pub plot: String,
    pub message: String,
}

impl PlotError {
    fn new(plot: &str, message: impl std::fmt::Display) -> Self {
        Self { plot: plot.to_string(), message: message.to_string() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesStyle {
    /// A line with a marker at every point (measured values).
    LineAndPoints,
    Line,
    /// A thin, light line (an envelope behind the main line).
    Faint,
}

/// A vertical interval at `x` (a confidence interval).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Whisker {
    pub x: f64,
    pub low: f64,
    pub high: f64,
}

/// Points joined by straight lines, in data coordinates.
pub type Polyline = Vec<(f64, f64)>;

/// One legend entry: one or more polylines in one colour, with optional whiskers.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text; empty for no legend entry.
    pub name: String,
    /// Index into the palette.
    pub color: usize,
    pub style: SeriesStyle,
    pub paths: Vec<Polyline>,
    pub whiskers: Vec<Whisker>,
}

/// A dashed reference line (a deadline, RT3's 45 ms, the end of a window).
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceLine {
    pub value: f64,
    pub label: String,
}

/// A line plot over two linear axes.
#[derive(Clone, Debug, PartialEq)]
pub struct XyPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub horizontal: Vec<ReferenceLine>,
    pub vertical: Vec<ReferenceLine>,
    /// Start the y axis at zero (quantities where the ratio to zero matters).
    pub y_from_zero: bool,
    /// Decimals of the x tick labels (0 for MHz).
    pub x_decimals: usize,
}

/// Smallest and largest finite value.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Widens `[lo, hi]` by `frac` of its width on each side; a single value gets ±10 % (±1 at 0),
/// since plotters cannot draw an empty range.
fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let d = if lo != 0.0 { lo.abs() * 0.1 } else { 1.0 };
        (lo - d, hi + d)
    } else {
        let d = (hi - lo) * frac;
        (lo - d, hi + d)
    }
}

/// Draws `plot` as SVG. An error when nothing in it is finite.
pub fn xy_plot_svg(plot: &XyPlot) -> Result<String, PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::new(&plot.title, e);
    let xs = plot
        .series
        .iter()
        .flat_map(|s| s.paths.iter().flatten().map(|p| p.0).chain(s.whiskers.iter().map(|w| w.x)))
        .chain(plot.vertical.iter().map(|r| r.value));
    let (x0, x1) = finite_range(xs).ok_or_else(|| err(&"no finite x values"))?;
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.paths.iter().flatten().map(|p| p.1).chain(s.whiskers.iter().flat_map(|w| [w.low, w.high])))
        .chain(plot.horizontal.iter().map(|r| r.value));
    let (y0, y1) = finite_range(ys).ok_or_else(|| err(&"no finite y values"))?;
    let (x0, x1) = padded(x0, x1, 0.04);
    let (y0, y1) = if plot.y_from_zero && y0 >= 0.0 {
        let (_, hi) = padded(0.0, y1, 0.0);
        (0.0, if y1 > 0.0 { y1 * 1.12 } else { hi })
    } else {
        padded(y0, y1, 0.08)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut legend: Vec<(String, ShapeStyle)> = Vec::new();
        // The legend gets its own panel on the right, so it never hides data.
        let longest = plot
            .series
            .iter()
            .map(|s| s.name.chars().count())
            .chain(plot.horizontal.iter().chain(&plot.vertical).map(|r| r.label.chars().count()))
            .max()
            .unwrap_or(0);
        let legend_width = (longest as u32 * 7 + 44).clamp(90, 260);
        let (plot_area, legend_area) = root.split_horizontally(WIDTH - legend_width);
        let x_decimals = plot.x_decimals;
        let x_format = move |v: &f64| format!("{v:.x_decimals$}");
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&plot.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(plot.x_label.as_str())
            .y_desc(plot.y_label.as_str())
            .x_label_formatter(&x_format)
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| err(&e))?;
        for r in &plot.horizontal {
            let style = BLACK.stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new([(x0, r.value), (x1, r.value)], 8, 5, style))
                .map_err(|e| err(&e))?;
            legend.push((r.label.clone(), style));
        }
        for r in &plot.vertical {
            let style = RGBColor(110, 110, 110).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new([(r.value, y0), (r.value, y1)], 6, 4, style))
                .map_err(|e| err(&e))?;
            legend.push((r.label.clone(), style));
        }
        for s in &plot.series {
            let c = color(s.color);
            let style = match s.style {
                SeriesStyle::LineAndPoints | SeriesStyle::Line => c.stroke_width(2),
                SeriesStyle::Faint => c.mix(0.35).stroke_width(1),
            };
            chart.draw_series(s.paths.iter().map(|p| PathElement::new(p.clone(), style))).map_err(|e| err(&e))?;
            if !s.name.is_empty() {
                legend.push((s.name.clone(), style));
            }
            if s.style == SeriesStyle::LineAndPoints {
                chart
                    .draw_series(
                        s.paths
                            .iter()
                            .flatten()
                            .filter(|p| p.0.is_finite() && p.1.is_finite())
                            .map(|&p| Circle::new(p, 3, c.filled())),
                    )
                    .map_err(|e| err(&e))?;
            }
            let whisker = c.stroke_width(1);
            chart
                .draw_series(s.whiskers.iter().map(|w| PathElement::new(vec![(w.x, w.low), (w.x, w.high)], whisker)))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(s.whiskers.iter().flat_map(|w| {
                    [w.low, w.high]
                        .map(|y| EmptyElement::at((w.x, y)) + PathElement::new(vec![(-4, 0), (4, 0)], whisker))
                }))
                .map_err(|e| err(&e))?;
        }
        for (i, (label, style)) in legend.iter().enumerate() {
            let y = 50 + 20 * i as i32;
            legend_area.draw(&PathElement::new(vec![(4, y), (24, y)], *style)).map_err(|e| err(&e))?;
            legend_area.draw(&Text::new(label.as_str(), (30, y - 7), ("sans-serif", 13))).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// One bar of a [`BarPlot`].
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    /// Non-finite: no bar, the value text says `n/a`.
    pub value: f64,
    pub color: usize,
    /// Text printed at the end of the bar.
    pub value_text: String,
}

/// Horizontal bars, first bar at the top.
#[derive(Clone, Debug, PartialEq)]
pub struct BarPlot {
    pub title: String,
    pub value_label: String,
    pub bars: Vec<Bar>,
    pub reference: Option<ReferenceLine>,
    /// A logarithmic value axis (for values spanning decades, e.g. microsecond switches
    /// against a 45 ms budget).
    pub log_scale: bool,
}

/// Draws the bars of `$plot` on `$root` with value axis `$x_range` whose bars start at `$x_lo`
/// (a macro because the linear and the logarithmic axes are different types in plotters).
macro_rules! draw_bars {
    ($root:expr, $plot:expr, $x_range:expr, $x_lo:expr, $err:expr) => {{
        let plot: &BarPlot = $plot;
        let err = $err;
        let n = plot.bars.len();
        let longest = plot.bars.iter().map(|b| b.label.chars().count()).max().unwrap_or(0);
        let label_width = (longest as u32 * 7 + 16).clamp(80, 340);
        let mut chart = ChartBuilder::on($root)
            .caption(&plot.title, ("sans-serif", 18))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(44)
            .y_label_area_size(label_width)
            .build_cartesian_2d($x_range, (0..n).into_segmented())
            .map_err(|e| err(&e))?;
        let label_of = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => plot.bars[n - 1 - *i].label.clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n + 1)
            .y_label_formatter(&label_of)
            .x_desc(plot.value_label.as_str())
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(plot.bars.iter().enumerate().filter(|(_, b)| b.value.is_finite() && b.value > $x_lo).map(
                |(i, b)| {
                    let row = n - 1 - i;
                    let mut r = Rectangle::new(
                        [($x_lo, SegmentValue::Exact(row)), (b.value, SegmentValue::Exact(row + 1))],
                        color(b.color).filled(),
                    );
                    r.set_margin(4, 4, 0, 0);
                    r
                },
            ))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(plot.bars.iter().enumerate().map(|(i, b)| {
                let x = if b.value.is_finite() && b.value > $x_lo { b.value } else { $x_lo };
                EmptyElement::at((x, SegmentValue::CenterOf(n - 1 - i)))
                    + Text::new(format!(" {}", b.value_text), (4, -6), ("sans-serif", 12))
            }))
            .map_err(|e| err(&e))?;
        if let Some(r) = &plot.reference {
            let style = RGBColor(192, 57, 43).stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    [(r.value, SegmentValue::Exact(0)), (r.value, SegmentValue::Last)],
                    8,
                    5,
                    style,
                ))
                .map_err(|e| err(&e))?;
            // Labelled at the top of the line rather than in a legend box that could cover a bar.
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((r.value, SegmentValue::Exact(n)))
                        + Text::new(
                            r.label.clone(),
                            (4, 2),
                            ("sans-serif", 12).into_font().color(&RGBColor(192, 57, 43)),
                        ),
                ))
                .map_err(|e| err(&e))?;
        }
    }};
}

/// Draws `plot` as SVG. An error when it has no bars or (log scale) no positive value.
pub fn bar_plot_svg(plot: &BarPlot) -> Result<String, PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::new(&plot.title, e);
    if plot.bars.is_empty() {
        return Err(err(&"no bars"));
    }
    let values = plot.bars.iter().map(|b| b.value).chain(plot.reference.iter().map(|r| r.value));
    let height = (90 + 28 * plot.bars.len() as u32).max(240);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        if plot.log_scale {
            let (lo, hi) = finite_range(values.filter(|v| *v > 0.0)).ok_or_else(|| err(&"no positive value"))?;
            // Whole decades around the data, so the axis labels are round numbers.
            let lo = 10f64.powf(lo.log10().floor());
            let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
            draw_bars!(&root, plot, (lo..hi).log_scale(), lo, err);
        } else {
            let (_, hi) = finite_range(values).unwrap_or((0.0, 1.0));
            let hi = if hi > 0.0 { hi * 1.15 } else { 1.0 };
            draw_bars!(&root, plot, 0.0..hi, 0.0, err);
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_plot() -> XyPlot {
        XyPlot {
            title: "latency <dense & pp>".into(),
            x_label: "frequency (MHz)".into(),
            y_label: "latency (ms)".into(),
            series: vec![Series {
                name: "pp_62 \"x\"".into(),
                color: 0,
                style: SeriesStyle::LineAndPoints,
                paths: vec![vec![(600.0, 12.0), (1000.0, 8.0), (1500.0, 5.0)]],
                whiskers: vec![Whisker { x: 600.0, low: 11.0, high: 13.0 }],
            }],
            horizontal: vec![ReferenceLine { value: 10.0, label: "deadline 10 ms".into() }],
            vertical: vec![],
            y_from_zero: true,
            x_decimals: 0,
        }
    }

    #[test]
    fn line_plot_is_deterministic_svg_with_escaped_text() {
        let a = xy_plot_svg(&line_plot()).unwrap();
        let b = xy_plot_svg(&line_plot()).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("<svg"), "{}", &a[..80]);
        assert!(a.contains("latency &lt;dense &amp; pp&gt;"), "title escaped");
        assert!(a.contains("pp_62 &quot;x&quot;"), "legend escaped");
        assert!(a.contains("deadline 10 ms"));
        assert!(a.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_single_point_still_plots_and_no_data_is_an_error() {
        let mut p = line_plot();
        p.series[0].paths = vec![vec![(1500.0, 5.0)]];
        p.series[0].whiskers.clear();
        p.horizontal.clear();
        assert!(xy_plot_svg(&p).is_ok());
        p.series[0].paths = vec![vec![(f64::NAN, 5.0)]];
        let e = xy_plot_svg(&p).unwrap_err().to_string();
        assert!(e.contains("no finite x values") && e.contains("latency <dense"), "{e}");
    }

    #[test]
    fn bar_plots_label_every_bar_on_linear_and_log_axes() {
        let bars = vec![
            Bar { label: "dense@1500 MHz".into(), value: 2.0, color: 0, value_text: "2.00 h".into() },
            Bar { label: "RT3 schedule".into(), value: 9.0, color: 1, value_text: "9.00 h".into() },
            Bar { label: "missing".into(), value: f64::NAN, color: 2, value_text: "n/a".into() },
        ];
        let mut plot =
            BarPlot { title: "battery".into(), value_label: "hours".into(), bars, reference: None, log_scale: false };
        let svg = bar_plot_svg(&plot).unwrap();
        for text in ["dense@1500 MHz", "RT3 schedule", "missing", "9.00 h", "n/a"] {
            assert!(svg.contains(text), "{text} missing");
        }
        plot.log_scale = true;
        plot.reference = Some(ReferenceLine { value: 45.0, label: "RT3: 45 ms".into() });
        plot.bars[0].value = 0.02;
        let svg = bar_plot_svg(&plot).unwrap();
        assert!(svg.contains("RT3: 45 ms"));
        plot.bars.clear();
        assert!(bar_plot_svg(&plot).is_err());
    }
}
