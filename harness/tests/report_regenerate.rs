//! `hil report` on synthetic run directories: byte-identical regeneration, well-formed HTML
//! and SVG, the SIMULATED label exactly when a board was simulated, the answer first (before
//! plots and provenance), switch costs from switch.parquet (or "not measured"), no interval
//! from fewer than 3 values, raw power traces, and escaping of text that comes from the results.

mod analysis_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use harness::power::Sample;
use harness::report::{terminal_summary, write_reports, ReportPaths};
use harness::results::{write_power_part, BoardLabels, CellKey, CellRecord};
use quick_xml::events::Event;
use quick_xml::Reader;

const LEVELS_KHZ: [u64; 3] = [1_500_000, 1_000_000, 600_000];
/// (name, kind, sparsity, latency at the top level in ms).
const VARIANTS: [(&str, &str, f64, f64); 3] =
    [("dense", "dense", 0.0, 12.0), ("bp50", "block", 0.5, 7.0), ("pp75", "pattern", 0.75, 4.0)];

fn scenario_yaml(simulated: bool) -> String {
    let board: &[&str] = if simulated {
        &[
            "  - name: sim",
            "    sim: true",
            "    cpus: [0]",
            "    workdir: /tmp/hil-sim",
            "    battery:",
            "      capacity_wh: 10.5",
        ]
    } else {
        &[
            "  - name: pi4",
            "    host: 127.0.0.1",
            "    user: pi",
            "    workdir: /tmp/hil",
            "    cpus: [0]",
            "    monitor:",
            "      kind: ppk2",
            "      port: /dev/ttyACM0",
            "      mode: ampere",
            "      rail_voltage_mv: 5000",
        ]
    };
    let mut lines = vec!["name: synth", "description: a synthetic run for the report tests", "boards:"];
    lines.extend_from_slice(board);
    lines.extend_from_slice(&[
        "model:",
        "  preset: rt3-transformer",
        "  seq: 35",
        "  seed: 7",
        "variants:",
        "  - name: dense",
        "    kind: dense",
        "  - name: bp50",
        "    kind: block",
        "    sparsity: 0.5",
        "    block_rows: 32",
        "  - name: pp75",
        "    kind: pattern",
        "    base: bp50",
        "    tile: 16",
        "    patterns: 4",
        "    sparsity: 0.75",
        "dvfs:",
        "  levels: [1500MHz, 1000MHz, 600MHz]",
        "measure:",
        "  repeats: 2",
        "constraints:",
        "  latency_deadline: 15ms",
    ]);
    lines.join("\n") + "\n"
}

/// A deterministic spread of latencies around `ms` (no randomness: the test data must be fixed).
fn latencies(ms: f64, n: usize, salt: u64) -> Vec<u64> {
    (0..n as u64).map(|i| ((ms * 1e6) as u64) + ((i * 7919 + salt * 104_729) % 1000) * 1000).collect()
}

fn cell(board: &str, simulated: bool, level: usize, variant: usize, repeat: u32, t0_ns: i64) -> CellRecord {
    let freq_khz = LEVELS_KHZ[level];
    let (name, kind, sparsity, top_ms) = VARIANTS[variant];
    let ms = top_ms * LEVELS_KHZ[0] as f64 / freq_khz as f64;
    let lat = latencies(ms, 40, (level * 10 + variant) as u64 + u64::from(repeat));
    let s = harness::stats::LatencySummary::from_ns(&lat).unwrap();
    let power_w = 2.0 + freq_khz as f64 / 3e6 - sparsity * 0.1 + f64::from(repeat) * 0.01;
    let idle_w = 2.0;
    let window_ns: u64 = lat.iter().sum();
    let energy_mj = power_w * s.mean_ms;
    CellRecord {
        board: board.into(),
        freq_khz,
        variant: name.into(),
        repeat,
        level: level as u32,
        variant_kind: kind.into(),
        sparsity,
        simulated,
        started_at: "2026-11-28T10:00:00Z".into(),
        attempts: 1,
        iterations: lat.len() as u64,
        window_ns,
        latency_median_ms: s.median_ms,
        latency_mean_ms: s.mean_ms,
        latency_p90_ms: s.p90_ms,
        latency_p99_ms: s.p99_ms,
        latency_min_ms: s.min_ms,
        latency_max_ms: s.max_ms,
        deadline_ms: Some(15.0),
        deadline_met: Some(s.p99_ms <= 15.0),
        cur_freq_khz: Some(freq_khz),
        freq_verified: true,
        off_target_ms: Some(0.0),
        throttled: false,
        temp_before_c: Some(45.0),
        temp_after_c: Some(47.5),
        cooldown_timed_out: false,
        checksum: format!("{name}-0123abcd"),
        mean_power_w: Some(power_w),
        idle_power_w: Some(idle_w),
        energy_per_inference_mj: Some(energy_mj),
        net_energy_per_inference_mj: Some(energy_mj - idle_w * s.mean_ms),
        power_samples: Some(1000),
        lost_samples: Some(0),
        clock_offset_uncertainty_us: Some(12.5),
        power_flagged: Some(false),
        power_rate_hz: None,
        power_few_samples: None,
        energy_missing_reason: None,
        monitor_clock_ppm: None,
        monitor_clock_points: None,
        monitor_clock_spread_us: None,
        monitor_clock_bound_us: None,
        fidelity_cosine: Some(1.0 - sparsity * 0.1),
        fidelity_rel_l2: Some(sparsity * 0.3),
        fidelity_kind: Some("perturbation (synthetic weights)".into()),
        time_capped: false,
        agent_note: None,
        sim_stretch_factor: None,
        cpu_busy_cores: None,
        sim_busy_cores: None,
        place: None,
        exporter_host: None,
        window_host_start_ns: Some(t0_ns),
        window_host_end_ns: Some(t0_ns + window_ns as i64),
        window_energy_j: Some(energy_mj * lat.len() as f64 / 1e3),
        latencies_ns: lat,
    }
}

fn board_meta(simulated: bool, simulation: &str) -> harness::runmeta::BoardMeta {
    use analysis_support::{hello, load_reply, monitor, variant_report};
    let mut m = monitor("PPK2", simulated);
    m.sample_rate_hz = Some(100_000.0);
    harness::runmeta::BoardMeta {
        transport: if simulated { "local" } else { "ssh" }.into(),
        simulated,
        simulation: simulated.then(|| simulation.to_string()),
        policies: vec!["policy0".into()],
        levels_khz: LEVELS_KHZ.to_vec(),
        agent: Some(harness::deploy::Deployed {
            remote_path: "/tmp/hil/hil-agent".into(),
            sha256: "ab".repeat(32),
            uploaded: true,
        }),
        agent_hello: Some(hello("aarch64", &["neon"], "Cortex-A72")),
        monitor: Some(m),
        model: Some(load_reply(
            "rt3-transformer",
            7,
            35,
            vec![
                variant_report("dense", "dense", None, 0.0),
                variant_report("bp50", "block", None, 0.5),
                variant_report("pp75", "pattern", Some("bp50"), 0.75),
            ],
        )),
        switch_ns: if simulated {
            [("dense", 1_200_000u64), ("bp50", 850_000), ("pp75", 310_000)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        } else {
            BTreeMap::new()
        },
        ..Default::default()
    }
}

/// A finished run of one board: 3 levels x 3 variants x 2 repeats, with power; the simulated
/// one with switch costs in switch.parquet, the real one without.
fn make_run(dir: &Path, simulated: bool, simulation: &str) -> String {
    make_run_with(dir, simulated, simulation, 2, simulated)
}

fn make_run_with(dir: &Path, simulated: bool, simulation: &str, repeats: u32, switches: bool) -> String {
    let board = if simulated { "sim" } else { "pi4" };
    if switches {
        analysis_support::write_switch_parquet(dir, &[analysis_support::switch_record(board, "pp75", 0.9, 12.0, 1.0)]);
    }
    fs::write(dir.join("scenario.yaml"), scenario_yaml(simulated)).unwrap();
    let run = analysis_support::run_meta(vec![(board, board_meta(simulated, simulation))]);
    fs::write(dir.join("run.json"), serde_json::to_string_pretty(&run).unwrap()).unwrap();
    let mut journal = String::new();
    let mut t0 = 1_000_000_000_i64;
    for repeat in 0..repeats {
        for level in 0..3 {
            for variant in 0..3 {
                let c = cell(board, simulated, level, variant, repeat, t0);
                t0 = c.window_host_end_ns.unwrap() + 500_000_000;
                journal.push_str(&serde_json::to_string(&c).unwrap());
                journal.push('\n');
            }
        }
    }
    fs::write(dir.join("cells.jsonl"), journal).unwrap();
    board.to_string()
}

/// Every file the report wrote, by path, with its bytes.
fn snapshot(paths: &ReportPaths) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = vec![paths.markdown.clone(), paths.html.clone()];
    all.extend(paths.plots.iter().cloned());
    all.extend(paths.battery_csv.iter().cloned());
    all.into_iter().map(|p| (p.clone(), fs::read(&p).unwrap())).collect()
}

/// Fails unless `text` is well-formed XML with one root element (entities and attributes
/// checked, end tags matched).
fn assert_well_formed(name: &str, text: &str) {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().check_comments = true;
    let (mut depth, mut roots) = (0i64, 0);
    let check_attributes = |e: &quick_xml::events::BytesStart, pos: u64| {
        for a in e.attributes() {
            let a = a.unwrap_or_else(|err| panic!("{name}: bad attribute at byte {pos}: {err}"));
            a.unescape_value().unwrap_or_else(|err| panic!("{name}: bad attribute value at byte {pos}: {err}"));
        }
    };
    loop {
        let pos = reader.buffer_position();
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                check_attributes(&e, pos);
                roots += i32::from(depth == 0);
                depth += 1;
            }
            Ok(Event::Empty(e)) => {
                check_attributes(&e, pos);
                roots += i32::from(depth == 0);
            }
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Text(t)) => {
                let text = t.decode().unwrap_or_else(|err| panic!("{name}: bad text at byte {pos}: {err}"));
                assert!(depth > 0 || text.trim().is_empty(), "{name}: text outside the root at byte {pos}: {text:?}");
            }
            Ok(Event::GeneralRef(r)) => {
                let known = r.is_char_ref() || matches!(&*r.decode().unwrap(), "amp" | "lt" | "gt" | "quot" | "apos");
                assert!(known, "{name}: unknown entity &{}; at byte {pos}", r.decode().unwrap());
                if r.is_char_ref() {
                    assert!(r.resolve_char_ref().unwrap().is_some(), "{name}: bad character reference at byte {pos}");
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("{name} is not well-formed at byte {}: {e}", reader.buffer_position()),
        }
    }
    assert_eq!(depth, 0, "{name}: unclosed elements");
    assert_eq!(roots, 1, "{name}: {roots} root elements");
}

#[test]
fn simulated_run_regenerates_byte_identically_with_well_formed_html_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), true, "SIMULATED board: fake sysfs at /tmp/x; P = 2 W + k * V^2 * f <model & emulated PPK2>");
    let first = write_reports(dir.path()).unwrap();
    let before = snapshot(&first);
    let second = write_reports(dir.path()).unwrap();
    assert_eq!(first, second, "the same files are written");
    let after = snapshot(&second);
    for (path, bytes) in &before {
        assert!(after[path] == *bytes, "{} changed on regeneration", path.display());
    }

    let names: Vec<String> =
        first.plots.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["latency_sim.svg", "energy_sim.svg", "battery_sim.svg", "switch_sim.svg", "power_sim.svg"] {
        assert!(names.contains(&expected.to_string()), "{expected} missing from {names:?}");
    }
    assert!(first.plots.iter().all(|p| p.parent().unwrap().ends_with("plots")));

    let html = fs::read_to_string(&first.html).unwrap();
    assert_well_formed("report.html", &html);
    for p in &first.plots {
        assert_well_formed(&p.display().to_string(), &fs::read_to_string(p).unwrap());
    }
    // Self-contained: every plot inline, nothing to fetch, no scripts.
    assert_eq!(html.matches("<svg").count(), first.plots.len(), "every plot is inlined");
    for forbidden in ["<script", " src=", " href=", "<link", "url("] {
        assert!(!html.contains(forbidden), "report.html contains {forbidden}");
    }

    let md = fs::read_to_string(&first.markdown).unwrap();
    assert!(html.contains("<div class=\"title\">SIMULATED</div>"), "prominent banner in the HTML");
    assert!(md.contains("**⚠ SIMULATED**"), "prominent banner in the Markdown");
    // The simulation description, escaped for each format.
    assert!(html.contains("k * V^2 * f &lt;model &amp; emulated PPK2&gt;"), "simulation text escaped in HTML");
    assert!(md.contains("k \\* V^2 \\* f \\<model & emulated PPK2\\>"), "simulation text escaped in Markdown");
    assert!(terminal_summary(dir.path()).unwrap().starts_with("*** SIMULATED"));

    // Provenance and the analysis tables are there.
    for text in [
        "abababababababababababababababababababababababababababababababab",
        "PPK2",
        "C1A2B3",
        "R0=1003.35, GS1=112.789",
        "6.6.31-v8+",
        "RT3 schedule",
        "RT3 paper's analytic model",
        "Model against measurement",
        "95 % confidence intervals",
        "within 45 ms",
        "Per-window mean power",
    ] {
        assert!(md.contains(text), "report.md lacks {text:?}");
    }
    assert!(md.contains("![latency sim](plots/latency_sim.svg)"), "Markdown links its plots");
    assert!(!md.contains("<svg"), "Markdown does not inline SVG");
}

#[test]
fn real_run_has_no_simulated_label_and_says_what_was_not_measured() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), false, "");
    let paths = write_reports(dir.path()).unwrap();
    let html = fs::read_to_string(&paths.html).unwrap();
    let md = fs::read_to_string(&paths.markdown).unwrap();
    let summary = terminal_summary(dir.path()).unwrap();
    for (name, text) in [("report.html", &html), ("report.md", &md), ("summary", &summary)] {
        assert!(!text.contains("SIMULATED"), "{name} of a real run says SIMULATED");
    }
    assert!(md.contains("| hardware | real board |"), "{md}");
    // No switch.parquet: switch costs read as not measured, in the answer and in the details.
    assert!(md.contains("Board pi4: switch costs not measured in this run"), "{md}");
    assert!(md.contains("Switch costs: not measured (no switch.parquet rows for this board)"), "{md}");
    let answer = section(&md, "## Answer", "## Plots");
    let rt3_row = answer.lines().find(|l| l.starts_with("| RT3 schedule |")).unwrap();
    assert!(rt3_row.ends_with("| not measured | not measured |"), "{rt3_row}");
    assert!(!paths.plots.iter().any(|p| p.ends_with("switch_pi4.svg")));
    assert_well_formed("report.html", &html);
    // The summary has one row per (level, variant) with the deadline verdict and energy.
    let rows: Vec<&str> = summary.lines().filter(|l| l.starts_with("pi4 ")).collect();
    assert_eq!(rows.len(), 9, "{summary}");
    assert!(rows.iter().any(|r| r.contains("MISSED")) && rows.iter().any(|r| r.contains(" met ")), "{summary}");
}

#[test]
fn raw_power_parts_give_a_sample_level_trace_of_the_dense_top_cell() {
    let dir = tempfile::tempdir().unwrap();
    let board = make_run(dir.path(), true, "SIMULATED board");
    let key = CellKey { board: board.clone(), freq_khz: LEVELS_KHZ[0], variant: "dense".into(), repeat: 0 };
    let start = 5_000_000_000_i64;
    let samples: Vec<Sample> = (0..20_000u64)
        .map(|i| Sample {
            t_ns: start as u64 + i * 10_000,
            current_a: 0.4 + if i % 1000 < 500 { 0.1 } else { 0.0 },
            voltage_v: 5.0,
            logic: None,
            clock: Some(i as f64),
        })
        .collect();
    write_power_part(dir.path(), &key, &samples, start, &BoardLabels::local(true)).unwrap();
    let paths = write_reports(dir.path()).unwrap();
    let md = fs::read_to_string(&paths.markdown).unwrap();
    assert!(
        md.contains("20000 raw samples from power\\_raw/sim\\_1500000\\_dense\\_r0.parquet")
            || md.contains("20000 raw samples from power_raw/sim_1500000_dense_r0.parquet"),
        "{md}"
    );
    assert!(!md.contains("Per-window mean power"), "raw samples replace the per-window trace");
    let svg = fs::read_to_string(paths.plots.iter().find(|p| p.ends_with("power_sim.svg")).unwrap()).unwrap();
    assert_well_formed("power_sim.svg", &svg);
    assert!(svg.contains("power (W)") && svg.contains("window end"), "axis and window marker");
    // Regeneration with raw power is still byte-identical.
    let again = write_reports(dir.path()).unwrap();
    assert_eq!(snapshot(&paths), snapshot(&again));
}

#[test]
fn stale_plots_are_removed_and_other_files_kept() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), true, "SIMULATED board");
    fs::create_dir_all(dir.path().join("plots")).unwrap();
    fs::write(dir.path().join("plots/latency_oldboard.svg"), "<svg/>").unwrap();
    fs::write(dir.path().join("plots/notes.txt"), "mine").unwrap();
    write_reports(dir.path()).unwrap();
    assert!(!dir.path().join("plots/latency_oldboard.svg").exists());
    assert!(dir.path().join("plots/notes.txt").exists());
}

#[test]
fn an_unreadable_run_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-run");
    let err = format!("{:#}", write_reports(&missing).unwrap_err());
    assert!(err.contains("no-such-run"), "{err}");
    // A directory without run.json names run.json.
    make_run(dir.path(), true, "SIMULATED board");
    fs::remove_file(dir.path().join("run.json")).unwrap();
    let err = format!("{:#}", write_reports(dir.path()).unwrap_err());
    assert!(err.contains("run.json"), "{err}");
}

/// The text of `md` from the heading `from` to the next heading starting with `to`.
fn section<'a>(md: &'a str, from: &str, to: &str) -> &'a str {
    let start = md.find(from).unwrap_or_else(|| panic!("no {from:?} in the report"));
    let end = md[start..].find(to).map_or(md.len(), |e| start + e);
    &md[start..end]
}

#[test]
fn the_answer_comes_first_then_plots_then_details_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), true, "SIMULATED board");
    let paths = write_reports(dir.path()).unwrap();
    let md = fs::read_to_string(&paths.markdown).unwrap();
    let at = |needle: &str| md.find(needle).unwrap_or_else(|| panic!("report.md lacks {needle:?}"));
    let order = [
        at("## Answer: the RT3 schedule against dense and block"),
        at("| policy | runs | deadline (p99 ≤ 15 ms) |"),
        at("!["),
        at("## Details: RT3 schedule"),
        at("## Details: pattern-set switching"),
        at("## Results per cell"),
        at("## Provenance: run"),
        at("## Provenance: boards"),
        at("## Method"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "sections out of order: {order:?}");

    // The answer table: the schedule (pattern sets only, one per level), its levels, the best
    // static policy and the two baselines, with the switch costs against 45 ms.
    let answer = section(&md, "## Answer", "## Plots");
    let rows: Vec<&str> = answer.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| policy")).collect();
    assert_eq!(rows.len(), 1 + 3 + 3, "{answer}");
    assert!(rows[0].starts_with("| RT3 schedule | pp75 → pp75 → pp75 | met at every level |"), "{}", rows[0]);
    assert!(rows[0].contains("slowest, pp75: 12.00 ms (first inference +1.00 ms): within 45 ms"), "{}", rows[0]);
    assert!(rows[1]
        .starts_with("| ↳ level 0: 1500 MHz, 50 % of the battery | pp75 (sparsity 0.750, cosine 0.9250) | met (p99"));
    assert!(rows[4].starts_with("| best static | "), "{}", rows[4]);
    assert!(rows[5].starts_with("| dense at top | dense@1500 MHz | met (p99"), "{}", rows[5]);
    assert!(rows[6].starts_with("| block at top | bp50@1500 MHz | met (p99"), "{}", rows[6]);
    assert!(answer.contains("RT3 schedule: "), "a verdict in words: {answer}");
    assert!(answer.contains("×") && answer.contains("dense at the top frequency"), "{answer}");
    assert!(answer.contains("Memory: every pattern set prepacked (hot switching) holds 80.0 MB; one set at a time"));
    assert!(answer.contains("never switches pattern sets"), "the same set everywhere is said: {answer}");
    // The simulated board says so in the answer and in its facts.
    assert!(answer.contains("### Board sim (SIMULATED)") && answer.contains("**⚠ SIMULATED**"), "{answer}");
    assert!(md.contains("| hardware | SIMULATED (not ARM hardware) |"), "{md}");

    // In the HTML the first table is the answer table, every table sits in a scrolling box,
    // and the first figure comes after it.
    let html = fs::read_to_string(&paths.html).unwrap();
    let first_table = html.find("<table").unwrap();
    assert!(html[first_table..].starts_with("<table>\n<thead><tr><th>policy</th><th>runs</th>"));
    assert!(html.find("<figure>").unwrap() > first_table);
    assert_eq!(html.matches("<table").count(), html.matches("<div class=\"table-wrap\">").count());
    assert!(html.contains("overflow-x:auto"));
}

#[test]
fn an_interval_from_fewer_than_three_values_is_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    make_run_with(dir.path(), false, "", 2, false);
    let md = fs::read_to_string(write_reports(dir.path()).unwrap().markdown).unwrap();
    let cells = section(&md, "## Results per cell", "## Details: power");
    let row = cells.lines().find(|l| l.starts_with("| 0 | 1500 MHz | dense |")).unwrap();
    let energy = row.split(" | ").nth(10).unwrap();
    assert!(energy.ends_with("(n=2: no interval)") && !energy.contains('['), "{row}");
    // Latency pools 80 inferences: its interval stays.
    let median = row.split(" | ").nth(7).unwrap();
    assert!(median.contains(" [") && median.ends_with(']'), "{row}");
    assert!(md.contains("drawn only from 3 or more repeats (this run has fewer, so no whiskers)"));

    // Three repeats: the energy interval is printed.
    let dir = tempfile::tempdir().unwrap();
    make_run_with(dir.path(), false, "", 3, false);
    let md = fs::read_to_string(write_reports(dir.path()).unwrap().markdown).unwrap();
    let cells = section(&md, "## Results per cell", "## Details: power");
    let row = cells.lines().find(|l| l.starts_with("| 0 | 1500 MHz | dense |")).unwrap();
    let energy = row.split(" | ").nth(10).unwrap();
    assert!(energy.contains(" [") && !energy.contains("no interval"), "{row}");
}

#[test]
fn switch_costs_come_from_switch_parquet_with_memory_per_strategy() {
    let dir = tempfile::tempdir().unwrap();
    make_run_with(dir.path(), true, "SIMULATED board", 2, false);
    // A set over the budget cold, and one whose columns are partly missing.
    analysis_support::write_switch_parquet(
        dir.path(),
        &[analysis_support::switch_record("sim", "pp75", 0.7, 220.2, 4.2)],
    );
    let paths = write_reports(dir.path()).unwrap();
    let md = fs::read_to_string(&paths.markdown).unwrap();
    let details = section(&md, "## Details: pattern-set switching", "## Results per cell");
    let row = details.lines().find(|l| l.starts_with("| pp75 |")).unwrap();
    assert_eq!(
        row, "| pp75 | 600 MHz | 5 | 0.7 µs | -0.10 | yes | 220.20 | 4.20 | no | 4.0 MB |",
        "hot, cold and first-inference penalty against 45 ms"
    );
    assert!(details.contains("| every pattern set prepacked | 80.0 MB | hot |"), "{details}");
    assert!(details.contains("| one pattern set at a time | 60.0 MB | cold |"), "{details}");
    let answer = section(&md, "## Answer", "## Plots");
    assert!(answer.contains("220.20 ms (first inference +4.20 ms): OVER 45 ms"), "{answer}");
    assert!(paths.plots.iter().any(|p| p.ends_with("switch_sim.svg")));
}
