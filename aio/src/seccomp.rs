//! A seccomp filter that makes chosen syscalls fail: how the workspace's `no_uring`
//! launcher denies io_uring and its tests deny `membarrier`, to show the fallbacks at
//! work. Not part of the API (exported hidden, for those two users).

use std::io;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn op(code: u16, jt: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf: 0, k }
}

/// The filter: load the syscall number (offset 0 of `struct seccomp_data`); each denied
/// number jumps past the remaining comparisons and the ALLOW to the ERRNO return.
fn program(syscalls: &[u32], errno: i32) -> Vec<libc::sock_filter> {
    let n = syscalls.len();
    let mut prog = vec![op(BPF_LD_W_ABS, 0, 0)];
    for (i, &nr) in syscalls.iter().enumerate() {
        prog.push(op(BPF_JEQ_K, (n - i) as u8, nr));
    }
    prog.push(op(BPF_RET_K, 0, libc::SECCOMP_RET_ALLOW));
    prog.push(op(
        BPF_RET_K,
        0,
        libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
    ));
    prog
}

/// Makes each syscall numbered in `syscalls` fail with `errno` in this thread and every
/// thread and process it creates from now on (`PR_SET_NO_NEW_PRIVS`, then a
/// `SECCOMP_SET_MODE_FILTER` filter; inherited across `exec`).
///
/// # Errors
/// `InvalidInput` for more than 200 syscalls; the `prctl(2)` or `seccomp(2)` error.
#[doc(hidden)]
pub fn deny_syscalls(syscalls: &[u32], errno: i32) -> io::Result<()> {
    if syscalls.len() > 200 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "deny_syscalls: at most 200 syscalls (a BPF jump reaches 255 instructions)",
        ));
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut prog = program(syscalls, errno);
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
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
