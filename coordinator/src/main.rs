//! The `drover` binary: parses the command line, starts logging, runs.

use clap::Parser;

use drover_coordinator::cli::{Cli, Command};

/// mimalloc: the coordinator spawns a task per request, and glibc's
/// aligned allocations of those tasks were a tenth of its CPU under load.
/// The `system-allocator` feature keeps glibc's (for heap profilers).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process: where the kernel's THP
    // mode is `always`, mimalloc's regions were backed by 2 MiB pages and
    // the coordinator held a fifth to a quarter more memory per agent
    // (`scripts/bench.sh`). Failing to set it only costs memory.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    // The server logs at info; CLI commands only warn unless asked.
    let default = match cli.command {
        Command::Serve(_) | Command::Nixops4(_) => "info",
        _ => "warn",
    };
    drover_net::logging::init(cli.log_format, default);
    drover_net::tls::install_default_provider();
    match drover_coordinator::command::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", drover_net::error_chain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}
