//! `aioctx`: the command-line face of the project. With no arguments it runs
//! `aioctx kickstat`, the kick-cost report (`cargo run --release`).

use std::process::ExitCode;

use clap::Parser;

use aioctx::aio::AioContext;
use aioctx::wait::{FenceMode, set_fence_mode};
use aioctx_cli::cli::{Cli, EXIT_USAGE, Run};
use aioctx_cli::{kickstat, stress};

/// Builds, and drops, a context made the way `main_context()` makes the main one, so
/// that what would make it fail — an invalid `AIOCTX_BACKEND`, io_uring denied while
/// forced, a ring too large for `RLIMIT_MEMLOCK` — is a one-line error before any
/// command starts, instead of a panic inside it. Spawns no thread (kickstat's syscall
/// counter must be opened before any other thread exists).
fn check_main_context() -> Result<(), String> {
    AioContext::builder()
        .name("main")
        .build()
        .map(drop)
        .map_err(|e| format!("cannot create the main AioContext: {e}"))
}

/// Chooses the process's fence mode before anything kicks or locks (`Auto`: as
/// `AIOCTX_FENCES` says, else asymmetric where `membarrier` works), so that an invalid
/// `AIOCTX_FENCES` or a refused `--fences asymmetric` is a one-line error. Spawns no
/// thread.
fn choose_fences(mode: FenceMode) -> Result<(), String> {
    set_fence_mode(mode)
        .map(drop)
        .map_err(|e| format!("cannot choose the fence mode: {e}"))
}

fn main() -> ExitCode {
    // Usage errors exit with clap's code 2; --help and --version with 0.
    let cli = Cli::parse();
    let json = cli.json;
    let fences = cli.fences.into();
    let run = cli.run();
    if let Err(e) = check_main_context().and_then(|()| choose_fences(fences)) {
        eprintln!("aioctx: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match run {
        Run::Kickstat(opts) => match kickstat::run(&opts, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aioctx kickstat: {e}");
                ExitCode::FAILURE
            }
        },
        Run::Stress(opts) => ExitCode::from(stress::run(&opts, json)),
    }
}
