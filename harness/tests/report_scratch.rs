mod report {
    pub use harness::report::*;
}
#[path = "../src/cli/report.rs"]
mod cli_report;

#[test]
#[ignore]
fn scratch_run_cli() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct W {
        #[command(flatten)]
        c: cli_report::ReportCmd,
    }
    let dir = std::env::var("HIL_REPORT_DIR").unwrap();
    let w = W::parse_from(["hil-report", dir.as_str()]);
    w.c.run().unwrap();
}
