#![cfg(not(loom))]
//! The fence mode's choice: `AIOCTX_FENCES` parsing, the refusal of `asymmetric` where
//! `membarrier` is denied, the fallback of `auto`, and that the mode is chosen once.
//!
//! The mode is process-wide and chosen once, so no two cases may share a process: each
//! test re-runs this binary (`std::env::current_exe()`) on its one `child` test, with
//! the case to run in `FENCE_CASE` and the environment the case needs; `child` does
//! nothing in a normal run. A child that must not have `membarrier` installs a seccomp
//! filter that makes the call fail with `ENOSYS` (a kernel before 4.14) before it
//! touches the mode.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use aioctx_aio::IoThread;
use aioctx_wait::{
    FenceMode, fence_mode, heavy_fence, kick, light_fence, membarrier_calls, set_fence_mode,
    try_fence_mode, wait_while,
};

const CASE: &str = "FENCE_CASE";

/// Runs `case` in a child process with `env` set (and `AIOCTX_FENCES` removed unless
/// `env` sets it); returns its stdout + stderr, panicking unless it exited 0.
fn run_case(case: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .env_remove(aioctx_wait::FENCES_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running the test binary again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "case {case} failed:\n{text}");
    assert!(
        text.contains(&format!("case {case} done")),
        "case {case} did not run:\n{text}"
    );
    text
}

/// The panic message of `f`, which must panic.
fn panic_of(f: impl FnOnce()) -> String {
    let err = panic::catch_unwind(AssertUnwindSafe(f)).expect_err("must panic");
    aioctx_testkit::panic_message(&*err)
}

/// Makes `membarrier(2)` fail with `ENOSYS` in this process from now on.
fn deny_membarrier() {
    aioctx_aio::__sys::deny_syscalls(&[libc::SYS_membarrier as u32], libc::ENOSYS)
        .unwrap_or_else(|e| panic!("seccomp filter denying membarrier: {e}"));
}

/// Whether this kernel grants the asymmetric mode (asked in a child, which keeps the
/// mode it chose to itself).
fn asymmetric_available() -> bool {
    let out = run_case("probe", &[]);
    out.contains("mode asymmetric")
}

/// A wait on the main loop that an iothread ends with a kick: the protocol works in
/// the chosen mode. Returns the membarrier calls the wait made.
fn kick_wakes_a_waiter() -> u64 {
    let io = IoThread::new("io-kick").expect("an iothread");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = Arc::clone(&done);
    let before = membarrier_calls();
    io.ctx().schedule_oneshot(move || {
        std::thread::sleep(Duration::from_millis(5));
        d.store(true, std::sync::atomic::Ordering::Release);
        kick();
    });
    wait_while(None, || !done.load(std::sync::atomic::Ordering::Acquire));
    membarrier_calls() - before
}

/// The child side: runs the case named by `FENCE_CASE`, if any.
#[test]
fn child() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    match case.as_str() {
        "probe" => println!("mode {}", fence_mode()),
        "invalid-env" => {
            let e = try_fence_mode().expect_err("AIOCTX_FENCES=sometimes is invalid");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(
                e.to_string()
                    .contains("AIOCTX_FENCES=\"sometimes\" is invalid")
                    && e.to_string().contains("symmetric, asymmetric or auto"),
                "{e}"
            );
            // The hot side has no error channel: the first kick panics with the cause.
            let msg = panic_of(kick);
            assert!(msg.contains("cannot choose the fence mode"), "{msg}");
            // An explicit choice overrides the environment.
            assert_eq!(
                set_fence_mode(FenceMode::Symmetric).unwrap(),
                FenceMode::Symmetric
            );
            kick();
        }
        "symmetric" => {
            assert_eq!(fence_mode(), FenceMode::Symmetric);
            assert_eq!(kick_wakes_a_waiter(), 0, "no membarrier in symmetric mode");
            assert_eq!(membarrier_calls(), 0);
        }
        "asymmetric" => {
            assert_eq!(fence_mode(), FenceMode::Asymmetric);
            // One registration: one membarrier.
            assert_eq!(kick_wakes_a_waiter(), 1);
            let before = membarrier_calls();
            for _ in 0..1000 {
                kick(); // no waiter: no syscall, no membarrier
            }
            assert_eq!(membarrier_calls(), before);
        }
        "denied-auto" => {
            deny_membarrier();
            assert_eq!(fence_mode(), FenceMode::Symmetric);
            assert_eq!(kick_wakes_a_waiter(), 0);
        }
        "denied-env-asymmetric" => {
            deny_membarrier();
            let e = try_fence_mode().expect_err("asymmetric without membarrier");
            let text = e.to_string();
            assert!(
                text.contains("membarrier(")
                    && text.contains(
                        "AIOCTX_FENCES=asymmetric forces asymmetric fences; unset it or set \
                         AIOCTX_FENCES=symmetric"
                    ),
                "{text}"
            );
            assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{text}");
            let msg = panic_of(|| {
                fence_mode();
            });
            assert!(msg.contains("AIOCTX_FENCES=asymmetric forces"), "{msg}");
        }
        "denied-set-asymmetric" => {
            deny_membarrier();
            let e = set_fence_mode(FenceMode::Asymmetric).expect_err("refused");
            assert!(
                e.to_string()
                    .contains("FenceMode::Asymmetric forces asymmetric fences"),
                "{e}"
            );
            // Still unchosen: a symmetric choice is possible afterwards.
            assert_eq!(
                set_fence_mode(FenceMode::Symmetric).unwrap(),
                FenceMode::Symmetric
            );
        }
        "once-explicit" => {
            let mode = set_fence_mode(FenceMode::Symmetric).unwrap();
            assert_eq!(mode, FenceMode::Symmetric);
            assert_eq!(set_fence_mode(FenceMode::Symmetric).unwrap(), mode);
            assert_eq!(set_fence_mode(FenceMode::Auto).unwrap(), mode);
            let msg = panic_of(|| {
                let _ = set_fence_mode(FenceMode::Asymmetric);
            });
            assert!(
                msg.contains(
                    "set_fence_mode(asymmetric) called after the fence mode was chosen as symmetric"
                ) && msg.contains("chosen once"),
                "{msg}"
            );
            assert_eq!(
                fence_mode(),
                FenceMode::Symmetric,
                "unchanged by the refusal"
            );
        }
        "once-after-kick" => {
            // The first kick chooses (from the environment: symmetric here); a later
            // explicit switch would break the pairs that kick was part of.
            kick();
            assert_eq!(fence_mode(), FenceMode::Symmetric);
            let msg = panic_of(|| {
                let _ = set_fence_mode(FenceMode::Asymmetric);
            });
            assert!(msg.contains("chosen once"), "{msg}");
        }
        "race" => {
            // Threads race to the first hot and rare fences: all see one mode.
            let n = 8;
            let barrier = Arc::new(Barrier::new(n));
            let seen: Vec<FenceMode> = (0..n)
                .map(|i| {
                    let b = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        b.wait();
                        if i % 2 == 0 {
                            light_fence();
                        } else {
                            heavy_fence();
                        }
                        fence_mode()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            assert!(seen.iter().all(|m| *m == seen[0]), "{seen:?}");
            assert_ne!(seen[0], FenceMode::Auto);
        }
        other => panic!("unknown case {other}"),
    }
    println!("case {case} done");
}

#[test]
fn invalid_env_is_a_clear_error_and_a_panic_on_the_first_kick() {
    run_case("invalid-env", &[("AIOCTX_FENCES", "sometimes")]);
}

#[test]
fn symmetric_env_uses_no_membarrier() {
    run_case("symmetric", &[("AIOCTX_FENCES", "symmetric")]);
}

#[test]
fn asymmetric_env_pays_one_membarrier_per_wait_and_none_per_kick() {
    if !asymmetric_available() {
        eprintln!(
            "skipped asymmetric_env_pays_one_membarrier_per_wait_and_none_per_kick: membarrier(PRIVATE_EXPEDITED) unavailable"
        );
        return;
    }
    run_case("asymmetric", &[("AIOCTX_FENCES", "asymmetric")]);
}

#[test]
fn auto_falls_back_to_symmetric_where_membarrier_is_denied() {
    run_case("denied-auto", &[]);
}

#[test]
fn asymmetric_env_where_membarrier_is_denied_is_refused() {
    run_case("denied-env-asymmetric", &[("AIOCTX_FENCES", "asymmetric")]);
}

#[test]
fn set_asymmetric_where_membarrier_is_denied_is_refused() {
    run_case("denied-set-asymmetric", &[]);
}

#[test]
fn mode_is_chosen_once_explicitly() {
    run_case("once-explicit", &[]);
}

#[test]
fn mode_is_chosen_once_by_the_first_kick() {
    run_case("once-after-kick", &[("AIOCTX_FENCES", "symmetric")]);
}

#[test]
fn racing_first_fences_agree_on_one_mode() {
    for _ in 0..3 {
        run_case("race", &[]);
    }
}
