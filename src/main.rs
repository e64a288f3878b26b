//! `aioctx`: the command-line face of the project. With no arguments it runs
//! `aioctx kickstat`, the kick-cost report (`cargo run --release`).

mod cli;
mod kickstat;
mod stress;
mod sys;
mod thread_probe;

use std::process::ExitCode;

use cli::Command;

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
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
