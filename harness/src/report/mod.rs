//! Reports: `report.md`, a self-contained `report.html` and `plots/*.svg`, regenerated from a
//! results directory alone, plus the terminal summary `hil run` prints after a run.
//!
//! How the pieces fit (measurement, analysis and reporting stay apart):
//! - input: [`crate::analysis::load_run`] reads `cells.jsonl`, `run.json` and `scenario.yaml`;
//!   [`power_trace::load_power_traces`] reads the raw power parts (or falls back to the
//!   journal's per-window means). That is all the I/O before writing.
//! - [`crate::analysis::analyze_run`] turns the run into statistics, the RT3 schedule and
//!   battery projections (measured and the paper's model).
//! - [`content::build_document`] says what the report says, answer first ([`answer`]: the
//!   RT3 schedule and the best static policy against dense and block, per board), as a format-neutral
//!   [`document::Document`] with its plots ([`plots`], SVG strings drawn with plotters);
//!   [`markdown::render`] and [`html::render`] print it. All pure and sorted, with seeded
//!   resampling and no generation timestamp, so the same directory gives the same bytes.
//! - [`write_reports`] writes the files (atomically); [`terminal_summary`] is the short table.

pub mod answer;
pub mod content;
pub mod document;
pub mod html;
pub mod markdown;
pub mod plots;
pub mod power_trace;
pub mod summary;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::analysis::battery::write_battery_csv;
use crate::analysis::{analyze_run, load_run, AnalysisOptions, RunAnalysis, RunData};
use crate::results::write_atomic;
use power_trace::PowerTrace;

pub const REPORT_MD: &str = "report.md";
pub const REPORT_HTML: &str = "report.html";
/// The plots' directory inside the run directory (owned by the report: stale SVGs are removed).
pub const PLOTS_DIR: &str = "plots";

/// The files [`write_reports`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportPaths {
    pub markdown: PathBuf,
    pub html: PathBuf,
    /// `plots/*.svg`, in the order the report shows them.
    pub plots: Vec<PathBuf>,
    /// `battery.csv` (the battery projections, measured and modelled), when any board has cells.
    pub battery_csv: Option<PathBuf>,
}

impl ReportPaths {
    /// Every path, one per line (what `hil report` prints).
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.markdown.display().to_string(), self.html.display().to_string()];
        out.extend(self.battery_csv.iter().map(|p| p.display().to_string()));
        out.extend(self.plots.iter().map(|p| p.display().to_string()));
        out
    }
}

/// The report's file contents, before writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedReport {
    pub markdown: String,
    pub html: String,
    /// `(file name under plots/, SVG text)`, in report order.
    pub plots: Vec<(String, String)>,
}

/// Renders the report of a loaded run (pure: no I/O).
pub fn render_report(run: &RunData, analysis: &RunAnalysis, traces: &[PowerTrace]) -> RenderedReport {
    let doc = content::build_document(run, analysis, traces);
    RenderedReport {
        markdown: markdown::render(&doc),
        html: html::render(&doc),
        plots: doc.figures().map(|f| (f.file.clone(), f.svg.clone())).collect(),
    }
}

/// Loads and analyses a run directory the way reports do (default analysis options: the
/// scenario's battery and workload, 95 % intervals with the fixed bootstrap seed).
pub fn load_and_analyze(run_dir: &Path) -> Result<(RunData, RunAnalysis)> {
    let run = load_run(run_dir)?;
    let analysis = analyze_run(&run, &AnalysisOptions::default());
    Ok((run, analysis))
}

/// Regenerates `report.md`, `report.html`, `plots/*.svg` and `battery.csv` in `run_dir` from
/// the files in it. Identical inputs give byte-identical outputs.
pub fn write_reports(run_dir: &Path) -> Result<ReportPaths> {
    write_reports_with_summary(run_dir).map(|(paths, _)| paths)
}

/// [`write_reports`] and [`terminal_summary`] in one pass (the run is loaded and analysed once).
pub fn write_reports_with_summary(run_dir: &Path) -> Result<(ReportPaths, String)> {
    let (run, analysis) = load_and_analyze(run_dir)?;
    let traces = power_trace::load_power_traces(run_dir, &run.cells)
        .with_context(|| format!("reading the power data in {}", run_dir.display()))?;
    let rendered = render_report(&run, &analysis, &traces);

    let plots_dir = run_dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&plots_dir).with_context(|| format!("creating {}", plots_dir.display()))?;
    remove_stale_plots(&plots_dir, &rendered.plots)?;
    let mut plots = Vec::with_capacity(rendered.plots.len());
    for (file, svg) in &rendered.plots {
        let path = plots_dir.join(file);
        write_atomic(&path, svg.as_bytes())?;
        plots.push(path);
    }
    let battery_csv =
        if analysis.battery.is_empty() { None } else { Some(write_battery_csv(run_dir, &analysis.battery)?) };
    let markdown = run_dir.join(REPORT_MD);
    write_atomic(&markdown, rendered.markdown.as_bytes())?;
    let html = run_dir.join(REPORT_HTML);
    write_atomic(&html, rendered.html.as_bytes())?;
    Ok((ReportPaths { markdown, html, plots, battery_csv }, summary::summary_text(&run, &analysis)))
}

/// Removes `*.svg` in `plots/` that this generation does not write (a board or plot that no
/// longer has data), so the directory matches the report.
fn remove_stale_plots(plots_dir: &Path, keep: &[(String, String)]) -> Result<()> {
    let entries = std::fs::read_dir(plots_dir).with_context(|| format!("listing {}", plots_dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", plots_dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".svg") && !keep.iter().any(|(f, _)| *f == name) {
            std::fs::remove_file(&path).with_context(|| format!("removing stale plot {}", path.display()))?;
        }
    }
    Ok(())
}

/// The compact table printed after each run (see [`summary`]).
pub fn terminal_summary(run_dir: &Path) -> Result<String> {
    let (run, analysis) = load_and_analyze(run_dir)?;
    Ok(summary::summary_text(&run, &analysis))
}
