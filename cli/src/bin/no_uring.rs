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

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The filter: load the syscall number; each io_uring call jumps to the EPERM return.
fn program() -> Vec<libc::sock_filter> {
    let n = IO_URING_SYSCALLS.len() as u8;
    // Offset of `nr` in `struct seccomp_data`.
    let mut prog = vec![stmt(BPF_LD_W_ABS, 0)];
    for (i, nr) in IO_URING_SYSCALLS.iter().enumerate() {
        let i = i as u8;
        prog.push(libc::sock_filter {
            code: BPF_JEQ_K,
            // Past the rest of the comparisons and the ALLOW, to the ERRNO return.
            jt: n - i,
            jf: 0,
            k: *nr,
        });
    }
    prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(
        BPF_RET_K,
        libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
    ));
    prog
}

fn deny_io_uring() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut prog = program();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, a valid BPF program that outlives the call; the
    // kernel copies it.
    let res = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const fprog,
        )
    };
    if res != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("usage: no_uring COMMAND [ARGS...]  (runs COMMAND with io_uring denied: EPERM)");
        return ExitCode::from(2);
    };
    if let Err(e) = deny_io_uring() {
        eprintln!("no_uring: cannot install the seccomp filter: {e}");
        return ExitCode::from(125);
    }
    let err = Command::new(&cmd).args(args).exec();
    eprintln!("no_uring: cannot run {}: {err}", cmd.to_string_lossy());
    ExitCode::from(127)
}
