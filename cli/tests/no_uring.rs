#![cfg(not(loom))]
//! io_uring denied by a seccomp filter: under the
//! `no_uring` launcher, `Backend::Auto` falls back to epoll with one log line that names
//! the reason, the loop works (BHs, timers, fd handlers, tasks, file I/O), and forcing
//! io_uring fails with a clear error instead.
//!
//! The parent tests re-run this test binary (or `aioctx`) under `no_uring`; the child
//! test `child_runs_without_io_uring` only does its work when `AIOCTX_NO_URING_CHILD` is
//! set, which only the parent does.

use aioctx_testkit as common;

use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aioctx::aio::{AioContext, Backend, ClockType, EventNotifier};

const CHILD: &str = "AIOCTX_NO_URING_CHILD";

fn no_uring(cmd: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_no_uring"));
    c.arg(cmd)
        .env_remove("AIOCTX_BACKEND")
        .env("RUST_BACKTRACE", "0");
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn aioctx_falls_back_to_epoll_with_one_log_line() {
    let _dog = common::Watchdog::arm_secs(120);
    let out = no_uring(env!("CARGO_BIN_EXE_aioctx"))
        .args([
            "--scenario",
            "kick-sleeping",
            "--iterations",
            "50",
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "aioctx failed under no_uring:\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("io_uring is unavailable"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one fallback line, got:\n{stderr}");
    let line = lines[0];
    for needle in [
        "Operation not permitted",
        "io_uring_setup",
        "epoll",
        "AIOCTX_BACKEND=epoll",
        "AIOCTX_BACKEND=io_uring",
    ] {
        assert!(
            line.contains(needle),
            "no `{needle}` in the fallback line: {line}"
        );
    }
    assert!(stdout.contains("backend epoll"), "{stdout}");
    assert!(stdout.contains("[ok  ] kick-sleeping"), "{stdout}");
}

#[test]
fn forcing_io_uring_under_no_uring_is_a_clear_error() {
    let _dog = common::Watchdog::arm_secs(120);
    let out = no_uring(env!("CARGO_BIN_EXE_aioctx"))
        .env("AIOCTX_BACKEND", "io_uring")
        .args([
            "--scenario",
            "kick-idle",
            "--iterations",
            "10",
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "forced io_uring ran under no_uring");
    for needle in [
        "cannot create the main AioContext",
        "io_uring_setup(128) failed: Operation not permitted",
        "AIOCTX_BACKEND=io_uring forces io_uring",
        "AIOCTX_BACKEND=epoll",
    ] {
        assert!(stderr.contains(needle), "no `{needle}` in:\n{stderr}");
    }
    assert!(
        !stderr.contains("io_uring is unavailable"),
        "a forced backend must not fall back:\n{stderr}"
    );
}

#[test]
fn invalid_backend_variable_is_a_clear_error() {
    // In a child process: the environment is process-wide.
    let out = Command::new(env!("CARGO_BIN_EXE_aioctx"))
        .env("AIOCTX_BACKEND", "kqueue")
        .env("RUST_BACKTRACE", "0")
        .args([
            "--scenario",
            "kick-idle",
            "--iterations",
            "10",
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("AIOCTX_BACKEND=\"kqueue\" is invalid")
            && stderr.contains("use io_uring, epoll or auto"),
        "{stderr}"
    );
}

#[test]
fn test_binary_runs_under_no_uring() {
    let _dog = common::Watchdog::arm_secs(120);
    let me = std::env::current_exe().unwrap();
    let out = no_uring(me.to_str().unwrap())
        .env(CHILD, "1")
        .args(["--exact", "child_runs_without_io_uring", "--nocapture"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(stdout.contains("child: epoll loop ok"), "{stdout}");
    let fallback = stderr
        .lines()
        .filter(|l| l.contains("io_uring is unavailable"))
        .count();
    assert_eq!(fallback, 1, "one fallback line per process:\n{stderr}");
}

/// The child: only meaningful under `no_uring` (see the module docs).
#[test]
fn child_runs_without_io_uring() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    // The filter is in place: the raw syscall is refused.
    // SAFETY: io_uring_setup(1, NULL) with a null params pointer touches no memory; the
    // filter refuses it before the kernel would read the pointer.
    let res = unsafe { libc::syscall(425, 1, std::ptr::null_mut::<libc::c_void>()) };
    assert_eq!(res, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );

    let forced = AioContext::builder().backend(Backend::IoUring).build();
    let err = forced.expect_err("io_uring forced under no_uring");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("Backend::IoUring forces io_uring"),
        "{err}"
    );

    // Several contexts: the fallback line is said once per process.
    let ctx = AioContext::new().unwrap();
    let _other = AioContext::new().unwrap();
    assert_eq!(ctx.backend(), Backend::Epoll);
    assert_eq!(ctx.backend().to_string(), "epoll");
    let reason = ctx.fallback_reason().expect("a fallback reason");
    assert!(reason.contains("Operation not permitted"), "{reason}");

    // A BH, a timer, an fd handler, a task doing file I/O.
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let bh = ctx.bh_new(move || {
        h.fetch_add(1, Ordering::Relaxed);
    });
    bh.schedule();
    let h = Arc::clone(&hits);
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        h.fetch_add(10, Ordering::Relaxed);
    });
    timer.modify(ClockType::Realtime.now_ns() + 1_000_000);
    let e = Arc::new(EventNotifier::new().unwrap());
    let (e2, h) = (Arc::clone(&e), Arc::clone(&hits));
    ctx.set_fd_handler(
        e.fd(),
        Some(Box::new(move || {
            e2.test_and_clear().unwrap();
            h.fetch_add(100, Ordering::Relaxed);
        })),
        None,
    )
    .unwrap();
    e.set().unwrap();
    while hits.load(Ordering::Relaxed) != 111 {
        ctx.poll(true);
    }
    let tmp = common::tempfile("no-uring");
    let fd = tmp.file.as_raw_fd();
    let c = Arc::clone(&ctx);
    let task = ctx.spawn(async move {
        let (res, _) = c.write_at(fd, b"no io_uring here".to_vec(), 0).await;
        res?;
        c.fdatasync(fd).await?;
        let (res, buf) = c.read_at(fd, vec![0u8; 16], 0).await;
        res?;
        Ok::<_, std::io::Error>(buf)
    });
    assert_eq!(ctx.block_on(task).unwrap().unwrap(), b"no io_uring here");
    // Raw SQEs are refused with a clear error.
    // SAFETY: a NOP names no memory (and it is not submitted anyway).
    let raw = unsafe {
        ctx.submit_raw(
            aioctx::aio::io_uring::opcode::Nop::new().build(),
            Box::new(|_, _| panic!("a refused raw op completed")),
        )
    };
    let err = raw.expect_err("submit_raw on epoll");
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    assert!(err.to_string().contains("epoll backend"), "{err}");
    ctx.set_fd_handler(e.fd(), None, None).unwrap();
    println!("child: epoll loop ok");
}
