//! The hit-rate lab: sizes a memcached for your traffic.
//!
//! Replays an access log (Common or Combined Log Format, nginx's and Apache's default) or a
//! synthetic stream (Zipf, or Zipf with one-hit scans) through [`MemcacheLayer`] against
//! real memcached servers it starts itself (`--servers` per point), over a sweep of memory
//! sizes (`-m`), lifetimes and near-tier sizes (`--near-cache`), and reports for each
//! point the hit ratio, the byte hit ratio, the origin calls and memcached's own
//! evictions, beside the ideal (an infinite cache with the same lifetime, computed from
//! the trace), with the near tier's hits and the memcached operations per request and
//! the busiest server's share of them.
//!
//! ```text
//! cargo run --release --example hit_rate -- --log bench/hit_rate/sample-access.log
//! cargo run --release --example hit_rate -- --help
//! ```
//!
//! A progress bar on stderr when it is a terminal, the table on stdout, `--csv` and
//! `--json` for scripts, and an SVG chart of hit ratio against memory (`--svg`, default
//! `target/hit_rate/sweep.svg`). `bench/hit_rate/README.md` has the sample log, the
//! sweep made from it and how to read it.
//!
//! [`MemcacheLayer`]: tower_memcache::cache::MemcacheLayer

mod lab;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = lab::cli::Args::parse();
    // `RUST_LOG=tower_memcache=debug` shows the layer's decisions; warnings by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // The servers the sweep starts are killed when their point's future is dropped:
    // stop on Ctrl-C or SIGTERM by dropping the run, not by exiting under it.
    let result = tokio::select! {
        result = lab::cli::run(args) => result,
        () = shutdown() => Err("interrupted".to_string()),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hit_rate: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await,
            };
        tokio::select! {
            () = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
