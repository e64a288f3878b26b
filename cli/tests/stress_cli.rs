//! `aioctx stress` end to end: the fixed policy completes under CPU pressure; the pre-fix
//! policy hangs the writer, and the watchdog exits 3 with the e3082ab3b3 diagnosis.
#![cfg(not(loom))]

use std::process::{Command, Output};

fn stress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aioctx"))
        .arg("stress")
        .args(args)
        .output()
        .expect("run aioctx stress")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn always_policy_completes_under_cpu_pressure() {
    let o = stress(&[
        "--unlock-kick",
        "always",
        "--iterations",
        "2000",
        "--iothreads",
        "4",
        "--watchdog-secs",
        "20",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"result\":\"completed\""), "{}", text(&o));
    assert!(out.contains("\"cycles\":2000"), "{}", text(&o));
}

#[test]
fn when_writer_seen_policy_hangs_and_the_watchdog_exits_3() {
    let o = stress(&[
        "--unlock-kick",
        "when-writer-seen",
        "--iterations",
        "2000",
        "--watchdog-secs",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "WRITER STUCK",
        "has_writer       = false",
        "num_waiters      = 1",
        "readers()        = 0",
        "main loop asleep = true",
        "e3082ab3b3",
    ] {
        assert!(out.contains(needle), "missing `{needle}`:\n{}", text(&o));
    }
}
