//! `no_uring COMMAND [ARGS...]`: runs COMMAND with io_uring denied, as Docker's default
//! seccomp profile, `kernel.io_uring_disabled=2` or some sandboxes deny it.
//!
//! It sets `PR_SET_NO_NEW_PRIVS` (so an unprivileged process may install a filter),
//! installs a seccomp filter that makes `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register` (425, 426, 427 on every Linux architecture) fail with `EPERM`,
//! and execs COMMAND, which inherits the filter along with all its children. Used by
//! `scripts/test.sh` and `tests/no_uring.rs` to show the epoll fallback at work.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

/// The io_uring syscalls, numbered alike on every architecture since Linux 5.1.
const IO_URING_SYSCALLS: [u32; 3] = [425, 426, 427];

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("usage: no_uring COMMAND [ARGS...]  (runs COMMAND with io_uring denied: EPERM)");
        return ExitCode::from(2);
    };
    if let Err(e) = aioctx::aio::__sys::deny_syscalls(&IO_URING_SYSCALLS, libc::EPERM) {
        eprintln!("no_uring: cannot install the seccomp filter: {e}");
        return ExitCode::from(125);
    }
    let err = Command::new(&cmd).args(args).exec();
    eprintln!("no_uring: cannot run {}: {err}", cmd.to_string_lossy());
    ExitCode::from(127)
}
