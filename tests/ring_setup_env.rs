//! `AIOCTX_RING_SETUP`: the flags it names are required on every context the process
//! builds, unless a builder set the flag itself; bad values are clear errors. The
//! variable is process-wide, so each case runs in a child process (this binary again,
//! one test selected), and the parent checks the child's verdict.
#![cfg(not(loom))]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aioctx::aio::{AioContext, Backend, RING_SETUP_ENV, RingFeatures};
use common::{Watchdog, say_skipped};

/// Set in the child runs: the case's test then checks instead of spawning.
const CHILD: &str = "AIOCTX_RING_SETUP_ENV_CHILD";

/// Runs `test` in a child with `AIOCTX_RING_SETUP=value`; returns its combined output.
fn in_child(test: &str, value: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env(RING_SETUP_ENV, value)
        .output()
        .expect("running the test binary again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{RING_SETUP_ENV}={value:?}:\n{text}");
    assert!(
        text.contains("1 passed"),
        "{RING_SETUP_ENV}={value:?}: the case did not run:\n{text}"
    );
    text
}

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// A context with the builder's `Auto`, or `None` (said) when this run is on epoll,
/// where the variable is checked but names nothing that applies.
fn uring(what: &str, ctx: Arc<AioContext>) -> Option<Arc<AioContext>> {
    if ctx.backend() == Backend::IoUring {
        Some(ctx)
    } else {
        say_skipped(&format!("skipped {what}: this run is on epoll"));
        None
    }
}

#[test]
fn flags_in_the_variable_are_on_for_default_builders() {
    if !is_child() {
        in_child(
            "flags_in_the_variable_are_on_for_default_builders",
            "coop_taskrun + taskrun_flag",
        );
        return;
    }
    let Some(ctx) = uring("env flags", AioContext::new().expect("a context")) else {
        return;
    };
    let want = RingFeatures::COOP_TASKRUN | RingFeatures::TASKRUN_FLAG;
    assert!(
        ctx.ring_features().contains(want),
        "ring runs with {}, {RING_SETUP_ENV} asked for {want}",
        ctx.ring_features()
    );
    // A wake-up from another thread under the setup: a oneshot BH scheduled there.
    let ran = Arc::new(AtomicBool::new(false));
    let (r, c) = (Arc::clone(&ran), Arc::clone(&ctx));
    std::thread::spawn(move || c.schedule_oneshot(move || r.store(true, Ordering::Relaxed)))
        .join()
        .unwrap();
    let _dog = Watchdog::arm_secs(10);
    while !ran.load(Ordering::Relaxed) {
        ctx.poll(true);
    }
}

#[test]
fn a_builder_that_sets_a_flag_wins_over_the_variable() {
    if !is_child() {
        in_child(
            "a_builder_that_sets_a_flag_wins_over_the_variable",
            "coop_taskrun+taskrun_flag",
        );
        return;
    }
    let ctx = AioContext::builder()
        .coop_taskrun(false)
        .taskrun_flag(false)
        .build()
        .expect("a context");
    let Some(ctx) = uring("builder wins", ctx) else {
        return;
    };
    assert_eq!(ctx.ring_features(), RingFeatures::NONE);
}

#[test]
fn none_is_a_plain_ring_without_the_defaults() {
    if !is_child() {
        in_child("none_is_a_plain_ring_without_the_defaults", "none");
        return;
    }
    let Some(ctx) = uring("none", AioContext::new().expect("a context")) else {
        return;
    };
    assert_eq!(ctx.ring_features(), RingFeatures::NONE);
    // A builder's own flag still wins.
    let ctx = AioContext::builder()
        .coop_taskrun(true)
        .build()
        .expect("a context");
    assert_eq!(
        ctx.ring_features(),
        RingFeatures::COOP_TASKRUN | RingFeatures::TASKRUN_FLAG
    );
}

#[test]
fn a_named_flag_brings_what_it_implies_and_drops_the_other_defaults() {
    if !is_child() {
        in_child(
            "a_named_flag_brings_what_it_implies_and_drops_the_other_defaults",
            "defer_taskrun",
        );
        return;
    }
    let Some(ctx) = uring("defer_taskrun", AioContext::new().expect("a context")) else {
        return;
    };
    assert_eq!(
        ctx.ring_features(),
        RingFeatures::SINGLE_ISSUER | RingFeatures::DEFER_TASKRUN | RingFeatures::TASKRUN_FLAG,
        "COOP_TASKRUN (a default not named) must be off, TASKRUN_FLAG (implied) on"
    );
}

/// The error a child gets for `value`, checked there against `needles`.
fn refused(value: &str, needles: &[&str]) {
    let err = AioContext::new().expect_err("an invalid AIOCTX_RING_SETUP must refuse the build");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(RING_SETUP_ENV), "{msg}");
    assert!(msg.contains(value), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{value:?}: {msg:?} lacks {n:?}");
    }
}

#[test]
fn an_unknown_name_is_refused_with_the_valid_ones() {
    if !is_child() {
        in_child(
            "an_unknown_name_is_refused_with_the_valid_ones",
            "single_issuer+turbo",
        );
        return;
    }
    refused("turbo", &["defer_taskrun", "coop_taskrun"]);
}

#[test]
fn an_empty_name_is_refused() {
    if !is_child() {
        in_child("an_empty_name_is_refused", "single_issuer+");
        return;
    }
    refused("single_issuer+", &["unknown io_uring setup flag"]);
}

#[test]
fn sqpoll_and_iopoll_are_refused_there() {
    if !is_child() {
        in_child("sqpoll_and_iopoll_are_refused_there", "sqpoll");
        in_child("sqpoll_and_iopoll_are_refused_there", "iopoll");
        return;
    }
    let value = std::env::var(RING_SETUP_ENV).unwrap();
    refused(&value, &["cannot be set there"]);
}
