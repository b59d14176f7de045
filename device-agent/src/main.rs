//! `hil-agent`: the on-board inference agent. Parses arguments, pins CPUs,
//! and hands over to the library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use device_agent::agent::{Agent, AgentOptions};
use device_agent::oneshot::{self, BenchPlan, ModelChoice, DEFAULT_VARIANTS};
use device_agent::platform::{current_affinity, set_affinity, CpuList};
use device_agent::protocol::PROTO_VERSION;
use device_agent::serve::{serve, ServeEnd};
use device_agent::sim_stretch::{SimCpufreq, SIM_SYSFS_ENV};
use device_agent::variant_arg::{parse_variant_args, VARIANT_SYNTAX_HELP};
use kernels::Threads;
use std::io::{self, BufReader};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "hil-agent",
    version,
    about = "On-board agent of hil: runs dense, block-pruned and pattern-pruned Transformer inference",
    long_about = "On-board agent of hil: runs dense, block-pruned (BP) and pattern-pruned (PP) Transformer \
inference and times it.\n\nWithout a subcommand (or with `serve`) it speaks the hil JSON-lines protocol on \
stdin/stdout, which is how the hil harness drives it over SSH. `selftest` and `bench` are for people at the \
board's shell."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Args, Debug)]
struct GlobalArgs {
    /// Pin the agent (and any worker threads) to these CPUs, e.g. `0`, `0,1`, `2-3` (sched_setaffinity).
    #[arg(long, global = true, value_name = "LIST")]
    cpus: Option<CpuList>,
    /// Threads per inference. DVFS experiments use 1 (the default) pinned to one core.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// Refuse models estimated above this size, even if the board has more free (e.g. 512M, 2G).
    #[arg(long, global = true, value_name = "BYTES", value_parser = oneshot::parse_byte_size)]
    max_memory: Option<u64>,
    /// Simulated boards only (set by hil's simulator): stretch every timed inference by
    /// cpuinfo_max_freq / scaling_cur_freq of the fake cpufreq tree at DIR, spinning on the
    /// agent's core, so latency follows the simulated frequency. DIR must hold the simulator's
    /// marker hil-simulated.json and must not be /sys; anything else is refused.
    #[arg(long, global = true, value_name = "DIR", env = SIM_SYSFS_ENV)]
    sim_sysfs_root: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Speak the JSON-lines protocol on stdin/stdout (the default). Logs go to stderr.
    #[command(long_about = SERVE_HELP)]
    Serve,
    /// Check every variant's kernels against the scalar f64 reference on this CPU.
    Selftest {
        #[command(flatten)]
        model: ModelArgs,
        /// Tokens of the checked input (the reference is slow on small boards).
        #[arg(long, default_value_t = device_agent::protocol::DEFAULT_SELFTEST_TOKENS)]
        tokens: usize,
    },
    /// Time every variant and the switch between them; prints a table.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Untimed inferences before each window.
        #[arg(long, default_value_t = 3)]
        warmup: u32,
        /// At least this many timed inferences per variant.
        #[arg(long, default_value_t = 20)]
        iters: u32,
        /// And at least this long per variant, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        min_ms: u64,
        /// Switches of the active variant to time.
        #[arg(long, default_value_t = 1000)]
        switches: usize,
    },
}

const SERVE_HELP: &str = "Speak the hil JSON-lines protocol on stdin/stdout: one JSON object per line each way, \
stdout carries nothing else, logs go to stderr. EOF on stdin ends the agent cleanly.\n\n\
Example session:\n  \
{\"proto\":1,\"cmd\":\"hello\"}\n  \
{\"cmd\":\"load\",\"model\":{\"preset\":\"rt3-transformer\",\"seed\":1,\"seq\":35},\"variants\":[{\"kind\":\"dense\",\"name\":\"dense\"},{\"kind\":\"block\",\"name\":\"bp64\",\"sparsity\":0.64},{\"kind\":\"pattern\",\"name\":\"pp75\",\"base\":\"bp64\",\"tile\":16,\"sparsity\":0.75}]}\n  \
{\"cmd\":\"clock\"}\n  \
{\"id\":1,\"cmd\":\"run\",\"warmup\":3,\"min_iters\":20,\"min_ms\":2000}\n  \
{\"cmd\":\"switch\",\"variant\":\"pp75\"}\n  \
{\"cmd\":\"selftest\"}\n  \
{\"cmd\":\"quit\"}";

#[derive(Args, Debug)]
#[command(after_help = VARIANT_SYNTAX_HELP)]
struct ModelArgs {
    /// Model preset: distilbert, minilm or rt3-transformer.
    #[arg(long, default_value = "rt3-transformer")]
    preset: String,
    /// Tokens per inference (default: the preset's).
    #[arg(long)]
    seq: Option<usize>,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Read the preset's weights from this safetensors file instead of generating them.
    #[arg(long, value_name = "PATH")]
    safetensors: Option<String>,
    /// rt3-transformer: also run its output projection onto the 33,278-word vocabulary (most of
    /// the model's MACs), pruned like the other layers.
    #[arg(long)]
    lm_head: bool,
    /// A variant to build (repeatable; see the syntax below). Default: dense, block:0.64, pattern:0.75:16, pattern:0.875:8.
    #[arg(long = "variant", value_name = "SPEC")]
    variants: Vec<String>,
}

impl ModelArgs {
    fn choice(&self) -> anyhow::Result<ModelChoice> {
        let variants = if self.variants.is_empty() {
            parse_variant_args(&DEFAULT_VARIANTS)
        } else {
            parse_variant_args(&self.variants)
        }
        .map_err(anyhow::Error::msg)?;
        Ok(ModelChoice {
            preset: self.preset.clone(),
            seq: self.seq,
            seed: self.seed,
            safetensors: self.safetensors.clone(),
            lm_head: self.lm_head,
            variants,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hil-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Before anything starts a thread: workers inherit the mask of their creator.
    if let Some(cpus) = &cli.global.cpus {
        set_affinity(cpus).with_context(|| format!("pinning to CPUs {cpus} (--cpus)"))?;
    }
    let sim_stretch = match &cli.global.sim_sysfs_root {
        None => None,
        Some(root) => {
            let cpu = current_affinity().cpus().first().copied().unwrap_or(0);
            let tree = SimCpufreq::open(root, cpu)
                .with_context(|| format!("--sim-sysfs-root / {SIM_SYSFS_ENV} = {}", root.display()))?;
            let s = tree.status();
            device_agent::log(format_args!(
                "SIMULATED board: inferences stretched by {} / scaling_cur_freq (now {} kHz, x{:.3})",
                s.policy, s.cur_khz, s.factor_now
            ));
            Some(tree)
        }
    };
    let options = AgentOptions {
        threads: if cli.global.threads == 1 { Threads::One } else { Threads::N(cli.global.threads as usize) },
        memory_limit: cli.global.max_memory,
        sim_stretch,
    };
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            device_agent::log(format_args!(
                "{} serving protocol {PROTO_VERSION} on stdin/stdout",
                device_agent::AGENT_VERSION
            ));
            device_agent::platform::exit_when_orphaned(std::time::Duration::from_millis(100));
            let mut agent = Agent::new(options);
            let stdin = io::stdin();
            let end = serve(&mut agent, BufReader::new(stdin.lock()), io::stdout().lock())
                .context("protocol stream failed")?;
            device_agent::log(format_args!(
                "{}",
                match end {
                    ServeEnd::Eof => "stdin closed, exiting",
                    ServeEnd::Quit => "quit, exiting",
                }
            ));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Selftest { model, tokens } => {
            let (report, passed) = oneshot::selftest(options, &model.choice()?, tokens)?;
            print!("{report}");
            Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Bench { model, warmup, iters, min_ms, switches } => {
            let plan = BenchPlan { warmup, min_iters: iters, min_ms, switches };
            print!("{}", oneshot::bench(options, &model.choice()?, plan)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
