//! Bad input and misuse (the rows that touch the core loop): each case checks
//! the error or the panic message, and that nothing is lost or left spinning.
//!
//! The tests that close descriptors take `FD_LOCK`, and so do all tests of this binary
//! that create descriptors, so that a closed descriptor's number cannot be reused by a
//! concurrent test while the loop still looks at it.
#![cfg(not(loom))]

mod common;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use aioctx::aio::{AioContext, ClockType, ContextGone, MAX_RING_ENTRIES};
use common::{Watchdog, new_ctx};

static FD_LOCK: Mutex<()> = Mutex::new(());

fn fd_lock() -> MutexGuard<'static, ()> {
    FD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let res = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(res, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 just returned these two descriptors; nobody else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_byte(fd: &OwnedFd) {
    // SAFETY: writes one byte from a valid local buffer to an open descriptor.
    let res = unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    assert_eq!(res, 1, "write: {}", io::Error::last_os_error());
}

fn counter_cb(c: &Arc<AtomicUsize>) -> Box<dyn FnMut() + Send> {
    let c = Arc::clone(c);
    Box::new(move || {
        c.fetch_add(1, Ordering::Relaxed);
    })
}

#[test]
fn invalid_fd_is_an_error_naming_the_fd() {
    let _g = fd_lock();
    let ctx = new_ctx();
    let runs = Arc::new(AtomicUsize::new(0));
    // Far above any RLIMIT_NOFILE, so never open; and a negative one.
    for fd in [1_000_000 as RawFd, -1] {
        let err = ctx
            .set_fd_handler(fd, Some(counter_cb(&runs)), None)
            .expect_err("an invalid fd was accepted");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("fd {fd}")),
            "the error does not name fd {fd}: {msg}"
        );
        assert!(
            msg.contains("Bad file descriptor"),
            "the error does not carry the cause: {msg}"
        );
        assert!(!ctx.has_fd_handler(fd));
        let err = ctx
            .set_fd_handler(fd, None, Some(counter_cb(&runs)))
            .expect_err("an invalid fd was accepted for writing");
        assert!(err.to_string().contains(&format!("fd {fd}")), "{err}");
    }
    assert!(!ctx.poll(false));
    assert_eq!(runs.load(Ordering::Relaxed), 0);
    // Removing a handler that was never set is not an error.
    ctx.set_fd_handler(1_000_000, None, None).unwrap();
}

#[test]
fn closed_fd_is_an_error_naming_the_fd() {
    let _g = fd_lock();
    let ctx = new_ctx();
    let (r, w) = pipe();
    let fd = r.as_raw_fd();
    drop(r);
    let err = ctx
        .set_fd_handler(fd, Some(Box::new(|| {})), None)
        .expect_err("a closed fd was accepted");
    assert!(err.to_string().contains(&format!("fd {fd}")), "{err}");
    assert!(!ctx.has_fd_handler(fd));
    assert!(!ctx.poll(false));
    drop(w);
}

/// Polls without blocking until the stats stop moving, then checks that they stay put:
/// the loop does not spin on a dead descriptor.
fn assert_quiet(ctx: &AioContext) {
    for _ in 0..10 {
        ctx.poll(false);
    }
    let before = ctx.stats();
    for _ in 0..100 {
        assert!(
            !ctx.poll(false),
            "progress on an idle loop: {:?}",
            ctx.stats()
        );
    }
    let after = ctx.stats();
    assert_eq!(
        after.cqes, before.cqes,
        "the loop keeps reaping completions"
    );
    assert_eq!(
        after.enters, before.enters,
        "the loop keeps entering the kernel"
    );
    assert_eq!(after.fd_handlers_run, before.fd_handlers_run);
}

#[test]
fn fd_closed_before_the_loop_armed_it_is_removed() {
    let _g = fd_lock();
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let runs = Arc::new(AtomicUsize::new(0));
    let (r, w) = pipe();
    let fd = r.as_raw_fd();
    ctx.set_fd_handler(fd, Some(counter_cb(&runs)), None)
        .unwrap();
    assert!(ctx.has_fd_handler(fd));
    drop(r);

    assert_quiet(&ctx);
    assert!(
        !ctx.has_fd_handler(fd),
        "the handler of closed fd {fd} is still registered"
    );
    assert_eq!(runs.load(Ordering::Relaxed), 0);
    drop(w);
}

#[test]
fn fd_closed_by_its_own_handler_is_removed() {
    // The handler closes its readable fd without unregistering it (a common bug): the
    // loop's re-arm finds the fd closed, removes the handler and does not spin.
    let _g = fd_lock();
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let fd = r.as_raw_fd();
    let runs = Arc::new(AtomicUsize::new(0));
    let reader = Arc::new(Mutex::new(Some(r)));
    let (rc, rr) = (Arc::clone(&runs), Arc::clone(&reader));
    ctx.set_fd_handler(
        fd,
        Some(Box::new(move || {
            rc.fetch_add(1, Ordering::Relaxed);
            drop(rr.lock().unwrap().take());
        })),
        None,
    )
    .unwrap();
    assert!(!ctx.poll(false));
    write_byte(&w);
    assert!(ctx.poll(false), "the readable pipe's handler did not run");
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert!(reader.lock().unwrap().is_none());

    assert_quiet(&ctx);
    assert!(
        !ctx.has_fd_handler(fd),
        "the handler of closed fd {fd} is still registered"
    );
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    drop(w);
}

#[test]
fn fd_closed_while_its_poll_is_armed_is_removed_when_it_fires() {
    // The in-flight POLL_ADD holds the kernel's file open, so the close itself is not
    // seen; the poll completes when the peer hangs up, the handler runs that once, and
    // the re-arm finds the fd closed and removes the handler.
    let _g = fd_lock();
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let runs = Arc::new(AtomicUsize::new(0));
    let (r, w) = pipe();
    let fd = r.as_raw_fd();
    ctx.set_fd_handler(fd, Some(counter_cb(&runs)), None)
        .unwrap();
    assert!(!ctx.poll(false)); // arms the poll
    drop(r);
    assert!(!ctx.poll(false));
    drop(w);
    while ctx.has_fd_handler(fd) {
        ctx.poll(true);
    }
    assert_quiet(&ctx);
    assert!(!ctx.has_fd_handler(fd));
    assert!(
        runs.load(Ordering::Relaxed) <= 1,
        "the dead fd's handler kept running"
    );
}

#[test]
fn poll_from_a_foreign_thread_panics_naming_both_threads() {
    let ctx = AioContext::builder().name("home-ctx").build().unwrap();
    ctx.poll(false); // binds the context to this (the test's) thread
    let home = thread::current().name().unwrap().to_owned();

    let msg = thread::scope(|s| {
        thread::Builder::new()
            .name("foreign-poller".into())
            .spawn_scoped(s, || {
                let err = catch_unwind(AssertUnwindSafe(|| ctx.poll(false)))
                    .expect_err("poll from a foreign thread did not panic");
                common::panic_message(&*err)
            })
            .unwrap()
            .join()
            .unwrap()
    });
    assert!(
        msg.contains("foreign-poller"),
        "the message does not name the calling thread: {msg}"
    );
    assert!(
        msg.contains(&home),
        "the message does not name the home thread `{home}`: {msg}"
    );
    assert!(
        msg.contains("home-ctx"),
        "the message does not name the context: {msg}"
    );
    // The home thread is unaffected.
    assert!(!ctx.poll(false));
}

#[test]
fn zero_and_oversized_rings_are_errors() {
    for entries in [0, MAX_RING_ENTRIES + 1, 1 << 20] {
        let err = AioContext::builder()
            .ring_entries(entries)
            .build()
            .expect_err("an out-of-range ring size was accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("ring size {entries}")) && msg.contains("out of range"),
            "unclear message for ring size {entries}: {msg}"
        );
        assert!(
            msg.contains(&MAX_RING_ENTRIES.to_string()),
            "no limit in: {msg}"
        );
    }
    // The bounds themselves work.
    for entries in [1, MAX_RING_ENTRIES] {
        let ctx = AioContext::builder().ring_entries(entries).build();
        let ctx = ctx.unwrap_or_else(|e| panic!("ring size {entries}: {e}"));
        assert!(!ctx.poll(false));
    }
}

#[test]
fn bh_scheduled_onto_a_dropped_context_is_refused() {
    let _g = fd_lock();
    let ctx = new_ctx();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let bh = ctx.bh_new(move || {
        r.fetch_add(1, Ordering::Relaxed);
    });
    bh.try_schedule().expect("schedule onto a live context");
    bh.cancel();
    drop(ctx);

    assert_eq!(bh.try_schedule(), Err(ContextGone));
    assert_eq!(
        ContextGone.to_string(),
        "the AioContext was shut down (dropped, or its IoThread stopped); the callback \
         will never run"
    );
    let err: Box<dyn std::error::Error> = Box::new(ContextGone);
    assert!(err.to_string().contains("dropped"));
    bh.schedule(); // harmless
    bh.schedule_idle(); // harmless
    bh.cancel();
    assert!(!bh.is_scheduled());
    drop(bh);
    assert_eq!(runs.load(Ordering::Relaxed), 0);
    // The callback's captures were freed.
    assert_eq!(Arc::strong_count(&runs), 1);
}

#[test]
fn bh_scheduled_onto_a_context_dropped_by_another_thread_is_harmless() {
    // Schedules race with the drop; whichever wins, nothing runs after the drop, nothing
    // crashes, and every callback is freed.
    let _g = fd_lock();
    for _ in 0..50 {
        let ctx = new_ctx();
        let runs = Arc::new(AtomicUsize::new(0));
        let bhs: Vec<_> = (0..8)
            .map(|_| {
                let r = Arc::clone(&runs);
                ctx.bh_new(move || {
                    r.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..100 {
                    for bh in &bhs {
                        let _ = bh.try_schedule();
                    }
                }
            });
            s.spawn(move || drop(ctx));
        });
        for bh in &bhs {
            assert_eq!(bh.try_schedule(), Err(ContextGone));
        }
        drop(bhs);
        assert_eq!(runs.load(Ordering::Relaxed), 0);
        assert_eq!(Arc::strong_count(&runs), 1, "a callback was leaked");
    }
}

#[test]
fn timers_and_oneshots_on_a_dropped_context_are_harmless() {
    let _g = fd_lock();
    let ctx = new_ctx();
    let fired = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fired);
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        f.fetch_add(1, Ordering::Relaxed);
    });
    timer.modify(ClockType::Realtime.now_ns() + 1_000_000_000);
    // A one-shot still pending when the context goes away is dropped, not run.
    let captured = Arc::clone(&fired);
    ctx.schedule_oneshot(move || {
        captured.fetch_add(100, Ordering::Relaxed);
    });
    drop(ctx);
    assert_eq!(
        Arc::strong_count(&fired),
        1,
        "the pending one-shot's or the armed timer's closure was not freed with its context"
    );

    // Never armed on the dead list: a modify after the drop is refused.
    timer.modify(0);
    timer.modify_anticipate(0);
    assert!(!timer.pending());
    timer.delete();
    assert!(!timer.pending());
    assert_eq!(timer.expire_time(), None);
    timer.modify(ClockType::Realtime.now_ns());
    drop(timer);
    assert_eq!(fired.load(Ordering::Relaxed), 0);
    assert_eq!(Arc::strong_count(&fired), 1);
}
