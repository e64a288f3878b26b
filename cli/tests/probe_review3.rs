//! Review probes for the CLI: bad inputs and resource refusals end in a clear error
//! (exit 2), never a panic (exit 101); JSON output parses.
#![cfg(not(loom))]

use std::process::{Command, Output};

use aioctx_testkit::Watchdog;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A thread the kernel refuses to create (here: an address-space limit too small for
/// the asked pressure threads' stacks) is a resource error, not a panic.
#[test]
fn stress_with_unspawnable_pressure_threads_is_a_clean_error() {
    let _dog = Watchdog::arm_secs(60);
    let bin = env!("CARGO_BIN_EXE_aioctx");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 400000 && exec '{bin}' stress --iterations 1 --iothreads 1 --pressure 400"
        ))
        .output()
        .expect("run aioctx stress under sh");
    assert_ne!(o.status.code(), Some(101), "panicked:\n{}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
}

/// `--pressure` is bounded like `--iothreads`: a huge count is a usage error at once.
#[test]
fn stress_pressure_is_bounded() {
    let _dog = Watchdog::arm_secs(60);
    // Under an address-space limit, so an unbounded run cannot start 10^6 threads.
    let bin = env!("CARGO_BIN_EXE_aioctx");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 400000 && exec '{bin}' stress --iterations 1 --iothreads 1 --pressure 1000000"
        ))
        .output()
        .expect("run aioctx stress under sh");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--pressure"),
        "{}",
        text(&o)
    );
}
