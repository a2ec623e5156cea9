//! miop-bench: the Miop load generator. See `miop-bench --help`.

use clap::Parser;
use miop::bench::cli::BenchArgs;

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = BenchArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIOP_BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(miop::bench::run::main(args, raw));
}
