//! Drives the built `hil-agent` binary through a pipe with a scripted session
//! and checks every reply, as the harness would over SSH.
//!
//! By default it runs the binary cargo just built. To run the same script
//! against another build, e.g. the static aarch64 agent under emulation:
//!
//! ```text
//! cargo build --release -p device-agent --target aarch64-unknown-linux-musl
//! HIL_AGENT_BIN=$PWD/target/aarch64-unknown-linux-musl/release/hil-agent \
//! HIL_AGENT_EXEC_PREFIX=qemu-aarch64-static \
//!     cargo test -p device-agent --test session
//! ```
//!
//! `HIL_AGENT_EXEC_PREFIX` is split on whitespace and put before the binary.
//! The expected `hello` architecture is read from the binary's ELF header,
//! so a wrong build is caught too.

use device_agent::protocol::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command as Process, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Per reply. Generous: under qemu a pattern-set build takes tens of seconds.
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

struct AgentUnderTest {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Option<String>>,
    stderr: Arc<Mutex<String>>,
    next_id: u64,
    label: String,
}

fn agent_binary() -> (String, Vec<String>) {
    let bin = std::env::var("HIL_AGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hil-agent").to_owned());
    let prefix = std::env::var("HIL_AGENT_EXEC_PREFIX").unwrap_or_default();
    (bin, prefix.split_whitespace().map(str::to_owned).collect())
}

/// Builds the command line: `[prefix...] bin args...`.
fn agent_command(args: &[&str]) -> (Process, String) {
    let (bin, prefix) = agent_binary();
    let mut argv: Vec<String> = prefix;
    argv.push(bin);
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = Process::new(&argv[0]);
    cmd.args(&argv[1..]);
    (cmd, argv.join(" "))
}

/// The architecture an ELF binary was built for, from `e_machine`.
fn elf_arch(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    assert_eq!(&bytes[..4], b"\x7fELF", "{path} is not an ELF file");
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        0x3e => "x86_64".into(),
        0xb7 => "aarch64".into(),
        0x28 => "arm".into(),
        0xf3 => "riscv64".into(),
        other => format!("e_machine 0x{other:x}"),
    }
}

/// On 32-bit ARM: whether the binary was built for NEON, from `Tag_Advanced_SIMD_arch` in its
/// `.ARM.attributes` (the linker keeps the highest of its objects'); `None` when it has none.
fn elf_arm_neon(path: &str) -> Option<bool> {
    let b = std::fs::read(path).ok()?;
    let (u16_at, u32_at) = (
        |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize,
        |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize,
    );
    if b.get(4) != Some(&1) {
        return None; // not ELF32
    }
    let (shoff, shentsize, shnum) = (u32_at(0x20), u16_at(0x2e), u16_at(0x30));
    const SHT_ARM_ATTRIBUTES: usize = 0x7000_0003;
    let sh = (0..shnum).map(|i| shoff + i * shentsize).find(|&h| u32_at(h + 4) == SHT_ARM_ATTRIBUTES)?;
    let attrs = b.get(u32_at(sh + 16)..u32_at(sh + 16) + u32_at(sh + 20))?;
    // 'A', then the "aeabi" subsection: length, vendor name, then a Tag_File (1) block: tag, size, attributes.
    let vendor_end = 5 + attrs.get(5..)?.iter().position(|&c| c == 0)? + 1;
    let mut p = vendor_end + 5;
    let uleb = |p: &mut usize| -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = *attrs.get(*p)?;
            *p += 1;
            v |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
    };
    while p < attrs.len() {
        let tag = uleb(&mut p)?;
        // Strings: Tag_CPU_raw_name (4), Tag_CPU_name (5), Tag_conformance (67), odd tags above 32.
        if matches!(tag, 4 | 5 | 67) || (tag > 32 && tag % 2 == 1) {
            p += attrs.get(p..)?.iter().position(|&c| c == 0)? + 1;
            continue;
        }
        let value = uleb(&mut p)?;
        if tag == 12 {
            return Some(value > 0); // Tag_Advanced_SIMD_arch
        }
        if tag == 32 {
            p += attrs.get(p..)?.iter().position(|&c| c == 0)? + 1; // Tag_compatibility: flag, then a name
        }
    }
    Some(false)
}

impl AgentUnderTest {
    fn spawn(args: &[&str]) -> Self {
        let (mut cmd, label) = agent_command(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{label}`: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(Some(line.expect("agent stdout is UTF-8"))).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { stdin: child.stdin.take(), child, lines, stderr, next_id: 0, label }
    }

    /// Sends one raw line and returns the raw reply line.
    fn exchange_raw(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        match self.lines.recv_timeout(REPLY_TIMEOUT) {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!("`{}` closed stdout instead of answering {line}", self.label),
            Err(_) => panic!("`{}` did not answer {line} within {REPLY_TIMEOUT:?}", self.label),
        }
    }

    /// Sends a request with a fresh id; checks the reply is one valid line echoing it.
    fn request(&mut self, command: Command) -> Response {
        self.next_id += 1;
        let req = Request::new(command).with_id(self.next_id);
        let line = String::from_utf8(encode_line(&req)).unwrap();
        let reply = self.exchange_raw(line.trim_end());
        let resp = decode_response(reply.as_bytes()).unwrap_or_else(|e| panic!("reply to {line}: {e}: {reply}"));
        assert_eq!(resp.id, Some(json!(self.next_id)), "reply id for {line}");
        assert_eq!(resp.proto, PROTO_VERSION);
        resp
    }

    fn ok<T: ReplyBody>(&mut self, command: Command) -> T {
        let name = command.name();
        self.request(command).expect::<T>().unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn refused(&mut self, command: Command) -> ErrorReply {
        let name = command.name();
        match self.request(command).outcome {
            Err(e) => e,
            Ok(reply) => panic!("{name} should have been refused, got {reply:?}"),
        }
    }

    fn raw_refused(&mut self, line: &str) -> ErrorReply {
        let reply = self.exchange_raw(line);
        match decode_response(reply.as_bytes()).unwrap().outcome {
            Err(e) => e,
            Ok(r) => panic!("{line:?} should have been refused, got {r:?}"),
        }
    }

    /// Closes stdin if still open and waits for the exit, checking stdout carried nothing more.
    fn finish(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                match self.lines.recv_timeout(Duration::from_secs(10)) {
                    Ok(None) => {}
                    Ok(Some(extra)) => panic!("unexpected output after the last reply: {extra}"),
                    Err(_) => panic!("stdout not closed after exit"),
                }
                return status;
            }
            assert!(Instant::now() < deadline, "`{}` did not exit", self.label);
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentUnderTest {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- stderr of `{}` ---\n{}", self.label, self.stderr.lock().unwrap());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dense(name: &str) -> VariantSpecWire {
    VariantSpecWire::Dense { name: name.into() }
}

fn small_load() -> LoadRequest {
    LoadRequest {
        model: ModelSpec { preset: "rt3-transformer".into(), seed: 7, seq: Some(8), safetensors: None, lm_head: false },
        variants: vec![
            dense("dense"),
            VariantSpecWire::Block {
                name: "bp50".into(),
                sparsity: 0.5,
                block_rows: 16,
                block_cols: 1,
                per_layer: None,
                global: false,
            },
            VariantSpecWire::Pattern {
                name: "pp75".into(),
                base: "bp50".into(),
                tile: 16,
                patterns_per_set: 4,
                sparsity: 0.75,
                method: PatternMethod::Rt3TileSums,
                seed: 0,
            },
        ],
        residency: Default::default(),
    }
}

fn short_run(variant: Option<&str>) -> Command {
    Command::Run(RunRequest {
        variant: variant.map(str::to_owned),
        warmup: 1,
        min_iters: 3,
        min_ms: 0,
        input_seed: DEFAULT_INPUT_SEED,
        max_ms: None,
    })
}

fn check_run(run: &RunReply, variant: &str, after_ns: u64) {
    assert_eq!(run.variant, variant);
    assert_eq!(run.iterations, 3);
    assert_eq!(run.latencies_ns.len(), 3);
    assert!(run.latencies_ns.iter().all(|l| *l > 0), "{:?}", run.latencies_ns);
    assert!(run.window_start_ns > after_ns, "window starts after the earlier clock reading");
    assert!(run.window_ns() >= run.latencies_ns.iter().sum::<u64>(), "latencies lie inside the window");
    assert_eq!(run.checksum.len(), 16);
    assert!(run.checksum.chars().all(|c| c.is_ascii_hexdigit()), "{}", run.checksum);
    assert!(run.outputs_consistent);
    assert!(!run.capped);
    assert_eq!(run.warmup, 1);
}

#[test]
fn scripted_session() {
    let (bin, _) = agent_binary();
    let expected_arch = elf_arch(&bin);
    let mut agent = AgentUnderTest::spawn(&["serve"]);

    // hello
    let hello: HelloReply = agent.ok(Command::Hello);
    assert_eq!(hello.agent, "hil-agent");
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.arch, expected_arch);
    if expected_arch == "aarch64" {
        assert!(hello.simd.iter().any(|f| f == "neon"), "{:?}", hello.simd);
    }
    // 32-bit ARM: the kernels use NEON exactly when the build targets it (thumbv7neon-*), and say so.
    if expected_arch == "arm" {
        let neon = elf_arm_neon(&bin).expect("a 32-bit ARM binary has .ARM.attributes");
        assert_eq!(hello.simd.iter().any(|f| f == "neon"), neon, "built for NEON: {neon}; hello: {:?}", hello.simd);
    }
    assert!(hello.cores >= 1 && !hello.allowed_cpus.is_empty());
    assert!(!hello.cpu_model.is_empty());
    assert_eq!(hello.kernel.sysname, "Linux");
    assert!(!hello.kernel.release.is_empty());
    assert_eq!(hello.threads, 1);

    // Refusals before anything is loaded; the agent keeps serving after each.
    let e = agent.refused(short_run(None));
    assert_eq!((e.kind, e.cmd.as_deref()), (ErrorKind::NotLoaded, Some("run")));
    let e = agent.raw_refused(r#"{"id":"p","proto":99,"cmd":"hello"}"#);
    assert_eq!(e.kind, ErrorKind::ProtoMismatch);
    assert!(e.error.contains("proto 99") && e.error.contains("proto 1"), "{}", e.error);
    let mut huge = small_load();
    huge.model.preset = "distilbert".into();
    huge.model.seq = Some(1 << 20);
    let e = agent.refused(Command::Load(huge));
    assert_eq!(e.kind, ErrorKind::OutOfMemory, "{}", e.error);
    assert!(e.error.contains("MiB"), "{}", e.error);

    // load
    let load: LoadReply = agent.ok(Command::Load(small_load()));
    assert_eq!((load.model.preset.as_str(), load.model.seq, load.model.layers), ("rt3-transformer", 8, 2));
    assert_eq!(load.active, "dense");
    let names: Vec<&str> = load.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["dense", "bp50", "pp75"]);
    let kinds: Vec<&str> = load.variants.iter().map(|v| v.kind.as_str()).collect();
    assert_eq!(kinds, ["dense", "block", "pattern"]);
    for (v, target) in load.variants.iter().zip([0.0, 0.5, 0.75]) {
        assert!((v.sparsity - target).abs() < 0.02, "{} sparsity {} vs {target}", v.name, v.sparsity);
        assert!(v.nnz > 0 && v.nnz <= v.dense_weights && v.bytes > 0 && v.prepare_ns > 0, "{v:?}");
    }
    assert_eq!(load.variants[2].base.as_deref(), Some("bp50"));
    assert!(load.estimated_bytes > 0);

    // clock, then run the active (dense) variant
    let before = agent.ok::<ClockReply>(Command::Clock).mono_ns;
    let run_dense: RunReply = agent.ok(short_run(None));
    check_run(&run_dense, "dense", before);
    let after = agent.ok::<ClockReply>(Command::Clock).mono_ns;
    assert!(after > run_dense.window_end_ns, "clock replies and windows share CLOCK_MONOTONIC");

    // switch, then run without naming a variant: the switched-to one runs
    let sw: SwitchReply = agent.ok(Command::Switch(SwitchRequest::hot("pp75")));
    assert_eq!((sw.previous.as_str(), sw.variant.as_str()), ("dense", "pp75"));
    assert!(sw.switch_ns > 0 && sw.switch_ns < 1_000_000_000, "{}", sw.switch_ns);
    let run_pp: RunReply = agent.ok(short_run(None));
    check_run(&run_pp, "pp75", after);
    assert_ne!(run_pp.checksum, run_dense.checksum, "a pruned model computes a different output");
    let again: RunReply = agent.ok(short_run(Some("dense")));
    assert_eq!(again.checksum, run_dense.checksum, "same weights, same input, same output");

    // more refusals with the model loaded
    let e = agent.refused(Command::Switch(SwitchRequest::hot("pp99")));
    assert_eq!(e.kind, ErrorKind::UnknownVariant);
    assert!(e.error.contains("pp99") && e.error.contains("pp75"), "{}", e.error);
    let e = agent.refused(Command::Run(RunRequest { min_iters: 0, ..RunRequest::default() }));
    assert_eq!(e.kind, ErrorKind::BadParams);
    assert!(e.error.contains("min_iters"), "{}", e.error);
    let e = agent.raw_refused(r#"{"cmd":"run","min_itres":5}"#);
    assert_eq!(e.kind, ErrorKind::BadParams);
    assert!(e.error.contains("min_itres"), "{}", e.error);

    // selftest
    let st: SelftestReply = agent.ok(Command::Selftest(SelftestRequest::default()));
    assert!(st.passed, "{st:?}");
    let tested: Vec<&str> = st.results.iter().map(|r| r.variant.as_str()).collect();
    assert_eq!(tested, ["dense", "bp50", "pp75"]);
    for r in &st.results {
        assert!(r.passed && r.max_abs_err.is_finite() && r.max_abs_err < 1e-2, "{r:?}");
    }

    // garbage and an unknown command
    let e = agent.raw_refused("this is not json");
    assert_eq!(e.kind, ErrorKind::Malformed);
    assert!(e.error.contains("this is not json"), "{}", e.error);
    let e = agent.raw_refused(r#"{"cmd":"reboot"}"#);
    assert_eq!(e.kind, ErrorKind::UnknownCommand);

    // still serving: the active variant survived every refusal
    let last: RunReply = agent.ok(short_run(None));
    assert_eq!(last.variant, "pp75");

    // quit: acknowledged, then a clean exit with nothing more on stdout
    let _: QuitReply = agent.ok(Command::Quit);
    let status = agent.finish();
    assert!(status.success(), "exit status {status}");
}

/// Holding one pattern set at a time: the load says what each strategy costs, a cold switch packs
/// the set and computes what the prepacked one computes, a hot switch to a set not resident is
/// refused by name, the probe times the first inferences after a switch, and fidelity compares
/// every resident variant with dense.
#[test]
fn one_set_residency_cold_switches_and_fidelity() {
    let mut agent = AgentUnderTest::spawn(&[]);
    let mut load = small_load();
    if let Some(VariantSpecWire::Pattern { name, .. }) = load.variants.last().cloned() {
        let mut second = load.variants.last().cloned().unwrap();
        if let VariantSpecWire::Pattern { name: n, sparsity, .. } = &mut second {
            *n = format!("{name}-b");
            *sparsity = 0.875;
        }
        load.variants.push(second);
    }
    let prepacked: LoadReply = agent.ok(Command::Load(load.clone()));
    let before: RunReply = agent.ok(short_run(Some("pp75-b")));
    load.residency = ResidencyWire::OneSet;
    let one: LoadReply = agent.ok(Command::Load(load));
    assert_eq!(one.residency, ResidencyWire::OneSet);
    let (all, one_set) = (one.resident_bytes_all_prepacked.unwrap(), one.resident_bytes_one_set.unwrap());
    assert!(one_set < all, "{one_set} < {all}");
    assert!(one.resident_bytes.unwrap() < prepacked.resident_bytes.unwrap());

    let e = agent.refused(Command::Switch(SwitchRequest::hot("pp75-b")));
    assert!(e.error.contains("pp75-b") && e.error.contains("cold"), "{}", e.error);
    let cold =
        Command::Switch(SwitchRequest { variant: "pp75-b".into(), mode: SwitchMode::Cold, probe: 3, input_seed: 1 });
    let sw: SwitchReply = agent.ok(cold);
    assert_eq!((sw.mode, sw.probe_ns.len()), (SwitchMode::Cold, 3));
    assert!(sw.switch_ns > 0 && sw.probe_ns.iter().all(|&t| t > 0), "{sw:?}");
    let after: RunReply = agent.ok(short_run(None));
    assert_eq!((after.variant.as_str(), &after.checksum), ("pp75-b", &before.checksum), "cold = prepacked output");
    let e = agent.refused(Command::Switch(SwitchRequest {
        variant: "bp50".into(),
        mode: SwitchMode::Cold,
        probe: 0,
        input_seed: 1,
    }));
    assert!(e.error.contains("bp50") && e.error.contains("pattern"), "{}", e.error);

    let fid: FidelityReply = agent.ok(Command::Fidelity(FidelityRequest::default()));
    assert_eq!(fid.kind, "perturbation (synthetic weights)");
    let by: std::collections::BTreeMap<&str, (f64, f64)> =
        fid.results.iter().map(|r| (r.variant.as_str(), (r.cosine, r.rel_l2))).collect();
    // The resident ones: dense, bp50 and the cold-switched set (pp75 was dropped by it).
    assert_eq!(by.keys().copied().collect::<Vec<_>>(), ["bp50", "dense", "pp75-b"]);
    assert_eq!(by["dense"], (1.0, 0.0));
    let (bp, pp) = (by["bp50"], by["pp75-b"]);
    assert!(bp.0 < 1.0 && pp.0 < bp.0 && pp.1 > bp.1 && bp.1 > 0.0, "more pruning, further from dense: {by:?}");
    let _: QuitReply = agent.ok(Command::Quit);
    assert!(agent.finish().success());
}

#[test]
fn eof_ends_the_agent_cleanly() {
    let mut agent = AgentUnderTest::spawn(&[]);
    let clock: ClockReply = agent.ok(Command::Clock);
    assert!(clock.mono_ns > 0);
    let status = agent.finish();
    assert!(status.success(), "exit status {status}");
    assert!(agent.stderr.lock().unwrap().contains("stdin closed"), "{}", agent.stderr.lock().unwrap());
}

#[test]
fn affinity_and_threads_show_in_hello() {
    let mut agent = AgentUnderTest::spawn(&["--cpus", "0", "--threads", "2"]);
    let hello: HelloReply = agent.ok(Command::Hello);
    assert_eq!(hello.allowed_cpus, [0]);
    assert_eq!(hello.threads, 2);
    let _: QuitReply = agent.ok(Command::Quit);
    assert!(agent.finish().success());
}

fn one_shot(args: &[&str]) -> (bool, String, String) {
    let (mut cmd, label) = agent_command(args);
    let out = cmd.output().unwrap_or_else(|e| panic!("running `{label}`: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_shot_selftest_and_bench_print_tables() {
    let model = ["--seq", "8", "--variant", "dense", "--variant", "bp=block:0.5:16x1", "--variant", "pattern:0.75:16"];
    let mut args = vec!["selftest"];
    args.extend(model);
    let (ok, out, err) = one_shot(&args);
    assert!(ok, "selftest failed:\n{out}\n{err}");
    assert!(out.contains("all variants passed"), "{out}");
    assert!(out.contains("pattern-0.75-t16") && out.contains("bp "), "{out}");

    let mut args = vec!["bench", "--warmup", "0", "--iters", "2", "--min-ms", "0", "--switches", "10"];
    args.extend(model);
    let (ok, out, err) = one_shot(&args);
    assert!(ok, "bench failed:\n{out}\n{err}");
    assert!(out.contains("median ms") && out.contains("speedup"), "{out}");
    assert!(out.contains("switching the active variant"), "{out}");

    let (ok, _, err) = one_shot(&["bench", "--variant", "pattern:0.75:16"]);
    assert!(!ok);
    assert!(err.contains("needs a block variant"), "{err}");
}
