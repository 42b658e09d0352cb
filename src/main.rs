//! `bdc`: the command line over the bdc crates. Parses arguments, sets up logging, calls the
//! libraries and maps errors to exit codes: 0 ok, 1 verification failed or not found, 2 any
//! other error.

// the CLI's doc comments are its `--help` text (clap), written for a terminal: `<data-dir>` and
// `[sell]` there are words, not HTML tags or intra-doc links
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod cli;
mod progress;
mod review;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BDC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli::log_filter(args.verbose, args.quiet)));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
