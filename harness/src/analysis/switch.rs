//! Reconfiguration costs per pattern set, as the run measured them (`switch.parquet`).
//!
//! RT3 claims a pattern-set switch "within 45 ms" (abstract, arXiv 2102.06336): putting a
//! set into effect. The runner measures it three ways per set, from the set's block base:
//! *hot* (the set is prepacked, the live model points at it), *cold* (the set is assigned
//! and packed from the resident BP weights and its pattern definitions, as on a device that
//! holds one packed set) and the *first-inference penalty* after each (the first inference
//! minus the median of the next ones). It also records the memory each strategy holds.
//!
//! Read leniently: no file means "not measured" (an older run, a board without pattern
//! sets, an interrupted run), and a missing column is a figure not measured, never an error.

use std::path::Path;

use polars::prelude::{DataFrame, DataType};

use crate::results::{read_parquet, SWITCH_PARQUET};

/// RT3's claim: pattern sets switch "within 45 ms" (abstract, arXiv 2102.06336).
pub const RT3_SWITCH_BUDGET_MS: f64 = 45.0;

/// One board and pattern set's row of `switch.parquet`; every figure optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwitchCost {
    pub board: String,
    pub variant: String,
    /// The level it was measured at.
    pub freq_khz: Option<u64>,
    pub simulated: Option<bool>,
    /// Switches measured of each kind (the figures are medians).
    pub rounds: Option<u64>,
    pub hot_switch_us: Option<f64>,
    pub cold_switch_ms: Option<f64>,
    pub hot_first_inference_penalty_ms: Option<f64>,
    pub cold_first_inference_penalty_ms: Option<f64>,
    /// The runner's headline penalty (the cold one); used when the per-kind columns are absent.
    pub first_inference_penalty_ms: Option<f64>,
    /// Bytes this set's packed layers take.
    pub resident_bytes: Option<u64>,
    /// What the model holds with every set prepacked, and with one set at a time.
    pub resident_bytes_all_prepacked: Option<u64>,
    pub resident_bytes_one_set: Option<u64>,
}

/// A penalty below zero (the first inference was faster than the median, noise) adds nothing.
fn added(penalty_ms: Option<f64>) -> f64 {
    penalty_ms.filter(|p| p.is_finite()).unwrap_or(0.0).max(0.0)
}

impl SwitchCost {
    /// The cold first-inference penalty, falling back to the headline column.
    pub fn cold_penalty_ms(&self) -> Option<f64> {
        self.cold_first_inference_penalty_ms.or(self.first_inference_penalty_ms)
    }

    /// What a cold switch costs before inference runs at full speed again: the switch plus its
    /// first-inference penalty (a negative penalty counts as none). What RT3's 45 ms covers on a
    /// device holding one packed set.
    pub fn cold_total_ms(&self) -> Option<f64> {
        self.cold_switch_ms.filter(|c| c.is_finite()).map(|c| c + added(self.cold_penalty_ms()))
    }

    /// The same for a hot switch (µs switch converted to ms).
    pub fn hot_total_ms(&self) -> Option<f64> {
        self.hot_switch_us.filter(|h| h.is_finite()).map(|h| h / 1e3 + added(self.hot_first_inference_penalty_ms))
    }
}

/// What the run says about switching: the rows, or why there are none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwitchData {
    pub rows: Vec<SwitchCost>,
    /// Set when `switch.parquet` exists but could not be read (the report says so).
    pub problem: Option<String>,
}

impl SwitchData {
    /// The rows of one board, in file order.
    pub fn of_board<'a>(&'a self, board: &'a str) -> impl Iterator<Item = &'a SwitchCost> + 'a {
        self.rows.iter().filter(move |r| r.board == board)
    }

    pub fn get(&self, board: &str, variant: &str) -> Option<&SwitchCost> {
        self.rows.iter().find(|r| r.board == board && r.variant == variant)
    }
}

fn strings(df: &DataFrame, name: &str) -> Option<Vec<Option<String>>> {
    let c = df.column(name).ok()?.cast(&DataType::String).ok()?;
    let ca = c.str().ok()?.clone();
    Some(ca.into_iter().map(|v| v.map(str::to_string)).collect())
}

fn floats(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name)
        .ok()
        .and_then(|c| c.cast(&DataType::Float64).ok())
        .and_then(|c| c.f64().ok().map(|ca| ca.into_iter().collect()))
        .unwrap_or_else(|| vec![None; df.height()])
}

fn unsigned(df: &DataFrame, name: &str) -> Vec<Option<u64>> {
    df.column(name)
        .ok()
        .and_then(|c| c.cast(&DataType::UInt64).ok())
        .and_then(|c| c.u64().ok().map(|ca| ca.into_iter().collect()))
        .unwrap_or_else(|| vec![None; df.height()])
}

fn bools(df: &DataFrame, name: &str) -> Vec<Option<bool>> {
    df.column(name)
        .ok()
        .and_then(|c| c.cast(&DataType::Boolean).ok())
        .and_then(|c| c.bool().ok().map(|ca| ca.into_iter().collect()))
        .unwrap_or_else(|| vec![None; df.height()])
}

/// The rows of a `switch.parquet` frame. Rows without a board or variant are skipped (they
/// cannot be placed); every other column is optional.
pub fn switch_costs(df: &DataFrame) -> Vec<SwitchCost> {
    let (Some(boards), Some(variants)) = (strings(df, "board"), strings(df, "variant")) else {
        return Vec::new();
    };
    let freq = unsigned(df, "freq_khz");
    let simulated = bools(df, "simulated");
    let rounds = unsigned(df, "rounds");
    let hot = floats(df, "hot_switch_us");
    let cold = floats(df, "cold_switch_ms");
    let hot_pen = floats(df, "hot_first_inference_penalty_ms");
    let cold_pen = floats(df, "cold_first_inference_penalty_ms");
    let pen = floats(df, "first_inference_penalty_ms");
    let bytes = unsigned(df, "resident_bytes");
    let all = unsigned(df, "resident_bytes_all_prepacked");
    let one = unsigned(df, "resident_bytes_one_set");
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    (0..df.height())
        .filter_map(|i| {
            Some(SwitchCost {
                board: boards[i].clone()?,
                variant: variants[i].clone()?,
                freq_khz: freq[i],
                simulated: simulated[i],
                rounds: rounds[i],
                hot_switch_us: finite(hot[i]),
                cold_switch_ms: finite(cold[i]),
                hot_first_inference_penalty_ms: finite(hot_pen[i]),
                cold_first_inference_penalty_ms: finite(cold_pen[i]),
                first_inference_penalty_ms: finite(pen[i]),
                resident_bytes: bytes[i],
                resident_bytes_all_prepacked: all[i],
                resident_bytes_one_set: one[i],
            })
        })
        .collect()
}

/// Reads `dir/switch.parquet`: no file is no rows (not measured); an unreadable file is no
/// rows with the reason in [`SwitchData::problem`], so the report still renders and says so.
pub fn load_switch_costs(dir: &Path) -> SwitchData {
    let path = dir.join(SWITCH_PARQUET);
    if !path.is_file() {
        return SwitchData::default();
    }
    match read_parquet(&path) {
        Ok(df) => SwitchData { rows: switch_costs(&df), problem: None },
        Err(e) => SwitchData { rows: Vec::new(), problem: Some(format!("{e:#}")) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::{Column, DataFrame};

    #[test]
    fn missing_columns_are_figures_not_measured() {
        let df = DataFrame::new(vec![
            Column::new("board".into(), ["b", "b"]),
            Column::new("variant".into(), ["pp75", "pp87"]),
            Column::new("cold_switch_ms".into(), [12.5, f64::NAN]),
            Column::new("first_inference_penalty_ms".into(), [-0.4, 1.0]),
        ])
        .unwrap();
        let rows = switch_costs(&df);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cold_switch_ms, Some(12.5));
        assert_eq!(rows[0].hot_switch_us, None);
        assert_eq!(rows[0].cold_penalty_ms(), Some(-0.4));
        // A negative penalty adds nothing to the total.
        assert_eq!(rows[0].cold_total_ms(), Some(12.5));
        assert_eq!(rows[1].cold_switch_ms, None, "NaN is not a measurement");
        assert_eq!(rows[1].cold_total_ms(), None);
        // Without board or variant columns nothing can be placed.
        let df = DataFrame::new(vec![Column::new("cold_switch_ms".into(), [1.0])]).unwrap();
        assert!(switch_costs(&df).is_empty());
    }

    #[test]
    fn totals_add_the_positive_first_inference_penalty() {
        let c = SwitchCost {
            hot_switch_us: Some(500.0),
            hot_first_inference_penalty_ms: Some(2.0),
            cold_switch_ms: Some(30.0),
            cold_first_inference_penalty_ms: Some(20.0),
            first_inference_penalty_ms: Some(99.0),
            ..SwitchCost::default()
        };
        assert_eq!(c.hot_total_ms(), Some(2.5));
        assert_eq!(c.cold_total_ms(), Some(50.0), "the per-kind penalty wins over the headline one");
    }
}
