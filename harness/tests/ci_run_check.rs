//! Checks a finished run directory named by `HIL_CHECK_RUN_DIR` (CI sets it after running
//! `scenarios/ci-ssh.yaml` over real SSH): every planned cell is present, energy per inference
//! is positive, every frequency was verified, nothing was lost. Without the variable the test
//! has nothing to check and says so.

use std::collections::HashSet;
use std::path::PathBuf;

use harness::plan::plan_board;
use harness::results::read_journal;
use harness::scenario::parse_scenario;

#[test]
fn ci_run_directory_is_complete_and_plausible() {
    let Some(dir) = std::env::var_os("HIL_CHECK_RUN_DIR").map(PathBuf::from) else {
        eprintln!("HIL_CHECK_RUN_DIR not set: no run directory to check (CI sets it after the SSH run)");
        return;
    };
    let text = std::fs::read_to_string(dir.join("scenario.yaml")).expect("scenario copy in the run directory");
    let scenario = parse_scenario(&text, "scenario.yaml").expect("scenario copy parses");
    let cells = read_journal(&dir).expect("journal readable");
    let done: HashSet<_> = cells.iter().map(|c| c.key()).collect();
    let meta = harness::runmeta::RunMeta::read(&dir).expect("run.json reads as this hil's run.json");
    // The boards that ran: a scenario entry, or for a labgrid entry the places it got (run.json
    // names each place's entry).
    let mut boards = Vec::new();
    for entry in &scenario.boards {
        if let Some(lab) = &entry.labgrid {
            let places: Vec<&str> = meta
                .board_names()
                .into_iter()
                .filter(|b| meta.board(b).and_then(|m| m.labgrid.as_ref()).is_some_and(|l| l.entry == entry.name))
                .collect();
            assert_eq!(places.len(), lab.selector.count(), "{}: every place of the entry ran: {places:?}", entry.name);
            for place in places {
                boards.push(harness::scenario::BoardSpec { name: place.to_string(), ..entry.clone() });
            }
        } else {
            boards.push(entry.clone());
        }
    }
    for board in &boards {
        let levels = match &scenario.dvfs.levels {
            harness::scenario::LevelsSpec::Khz(k) => k.clone(),
            harness::scenario::LevelsSpec::All => panic!("the CI scenario lists its levels"),
        };
        for cell in plan_board(&scenario, board, &levels).cells {
            assert!(done.contains(&cell.key), "cell {} missing from {}", cell.key, dir.display());
        }
        // Labgrid boards name their place and exporter host in every row.
        if board.labgrid.is_some() {
            for c in cells.iter().filter(|c| c.board == board.name) {
                assert_eq!(c.place.as_deref(), Some(board.name.as_str()), "{}: place", c.key());
                assert!(c.exporter_host.is_some(), "{}: exporter host", c.key());
            }
        }
    }
    assert_eq!(cells.len(), done.len(), "no cell recorded twice");
    for c in &cells {
        let key = c.key();
        assert!(c.freq_verified, "{key}: frequency not verified");
        assert!(
            c.energy_per_inference_mj.is_some_and(|e| e > 0.0),
            "{key}: energy per inference {:?}",
            c.energy_per_inference_mj
        );
        assert!(c.idle_power_w.is_some_and(|p| p > 0.0), "{key}: idle power {:?}", c.idle_power_w);
        // The simulator's model: a busy core draws C V^2 f on top of the idle (static) power.
        let (window, idle) = (c.mean_power_w.unwrap_or(0.0), c.idle_power_w.unwrap_or(0.0));
        assert!(window > idle + 0.1, "{key}: window {window} W is not above idle {idle} W: the busy core is not seen");
        assert_eq!(c.power_flagged, Some(false), "{key}: power window flagged");
        assert!(c.iterations >= scenario.measure.min_iterations, "{key}: {} iterations", c.iterations);
        // Served by `hil sim serve` behind SSH: labelled simulated from the marker alone, and
        // the agent stretched its inferences by the simulated clock.
        assert!(c.simulated, "{key}: a board behind `hil sim serve` is labelled simulated");
        let factor = c.sim_stretch_factor.unwrap_or(f64::NAN);
        let expected = 1_500_000.0 / c.freq_khz as f64;
        assert!((factor - expected).abs() < 0.02 * expected, "{key}: stretch factor {factor}, expected {expected}");
    }
    for file in ["report.md", "report.html", "cells.parquet", "latency.parquet", "power.parquet"] {
        assert!(dir.join(file).is_file(), "{file} missing from {}", dir.display());
    }
    for board in &boards {
        let b = meta.board(&board.name).unwrap_or_else(|| panic!("{} missing from run.json", board.name));
        assert_eq!(b.transport, "ssh", "{}: reached over SSH", board.name);
        // The agent built for the board's target ran: aarch64, or 32-bit ARM (`arm`) with NEON in use.
        let hello = b.agent_hello.as_ref().expect("hello recorded");
        match &board.target {
            harness::scenario::TargetSpec::Triple(t) if t.starts_with("aarch64") => assert_eq!(hello.arch, "aarch64"),
            harness::scenario::TargetSpec::Triple(t) if t.starts_with("thumbv7neon") => {
                assert_eq!(hello.arch, "arm", "{}: the 32-bit agent ran", board.name);
                assert!(hello.simd.iter().any(|s| s == "neon"), "{}: NEON in use: {:?}", board.name, hello.simd);
            }
            other => panic!("{}: unexpected target {other:?}", board.name),
        }
        assert!(b.selftest.as_ref().is_some_and(|s| s.passed), "{}: selftest", board.name);
        assert!(
            b.monitor.as_ref().is_some_and(|m| m.simulated),
            "{}: the emulated PPK2 is labelled simulated",
            board.name
        );
        assert!(b.simulated, "{}: the board is labelled simulated in run.json", board.name);
        let what = b.simulation.as_deref().unwrap_or_default();
        assert!(what.contains("SIMULATED") && what.contains("hil sim serve"), "{}: simulation {what:?}", board.name);
    }
    for table in ["cells.parquet", "latency.parquet", "power.parquet", "switch.parquet"] {
        let path = dir.join(table);
        if !path.is_file() {
            assert_ne!(table, "cells.parquet", "cells.parquet missing");
            assert!(!(table == "power.parquet" && scenario.measure.raw_power), "raw_power: true but no power.parquet");
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        use polars::prelude::*;
        let df = ParquetReader::new(file).finish().unwrap();
        let col = df.column("simulated").unwrap_or_else(|_| panic!("{table} has no simulated column"));
        assert!(col.bool().unwrap().all(), "{table}: every row simulated");
        // A run on labgrid places names the place and exporter host in every row of every table
        // (raw power samples included, when the scenario keeps them).
        if scenario.boards.iter().any(|b| b.labgrid.is_some()) {
            for name in ["place", "exporter_host"] {
                let col = df.column(name).unwrap_or_else(|_| panic!("{table} has no {name} column"));
                assert_eq!(col.null_count(), 0, "{table}: {name} missing in some rows");
            }
        }
    }
}
