//! `aioctx`: the command-line face of the project. With no arguments it runs
//! `aioctx kickstat`, the kick-cost report (`cargo run --release`).

mod cli;
mod kickstat;
mod stress;
mod sys;
mod thread_probe;

use std::process::ExitCode;

use aioctx::aio::AioContext;
use aioctx::wait::{FenceMode, set_fence_mode};
use cli::{Command, KickstatOptions};
use stress::StressOptions;

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
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Kickstat(_) | Command::Stress(_)) if let Err(e) = check_main_context() => {
            eprintln!("aioctx: {e}");
            ExitCode::from(2)
        }
        Ok(
            Command::Kickstat(KickstatOptions { fences, .. })
            | Command::Stress(StressOptions { fences, .. }),
        ) if let Err(e) = choose_fences(fences) => {
            eprintln!("aioctx: {e}");
            ExitCode::from(2)
        }
        Ok(Command::Kickstat(opts)) => match kickstat::run(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aioctx kickstat: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Stress(opts)) => ExitCode::from(stress::run(&opts)),
        Err(e) => {
            eprintln!("aioctx: {e}\n(run `aioctx --help` for the options)");
            ExitCode::from(2)
        }
    }
}
