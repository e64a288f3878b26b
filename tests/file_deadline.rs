//! Per-operation deadlines (`RingOp::with_deadline`) on the back end this run selects:
//! a read on a pipe nobody writes to times out (io_uring: a linked LINK_TIMEOUT; a
//! one-entry ring and epoll: a timer and the cancel), one that completes in time keeps
//! its result, a future with a deadline dropped mid-flight frees its buffer once, one
//! started from a task spawned by a bottom half, and a context dropped under one.
#![cfg(not(loom))]

mod common;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aioctx::aio::AioContext;

const SHORT: Duration = Duration::from_millis(20);

fn times_out(ctx: &Arc<AioContext>) {
    let (r, w) = common::pipe();
    let read = ctx
        .read_at(r.as_raw_fd(), vec![0u8; 8], 0)
        .with_deadline(SHORT);
    let (res, buf) = ctx.block_on(read);
    let e = res.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert_eq!(buf.len(), 8, "the buffer comes back");
    // Data written afterwards is there for the next reader: the read was cancelled.
    common::write_fd(w.as_raw_fd(), b"after");
    let (res, buf) = ctx.block_on(ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0));
    assert_eq!(res.unwrap(), 5);
    assert_eq!(&buf[..5], b"after");
}

#[test]
fn a_read_nobody_writes_to_times_out() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("a_read_nobody_writes_to_times_out", &ctx);
    times_out(&ctx);
}

/// A ring of one entry cannot link the timeout: the timer cancels the read instead.
#[test]
fn on_a_one_entry_ring_the_timer_cancels() {
    let Some(ctx) = common::uring_ctx(
        "on_a_one_entry_ring_the_timer_cancels",
        AioContext::builder().ring_entries(1),
    ) else {
        return;
    };
    let _w = common::Watchdog::for_ctx("one-entry ring deadline", &ctx);
    times_out(&ctx);
}

#[test]
fn a_read_that_completes_in_time_keeps_its_result() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("completes in time", &ctx);
    let (r, w) = common::pipe();
    common::write_fd(w.as_raw_fd(), b"ready");
    let read = ctx
        .read_at(r.as_raw_fd(), vec![0u8; 8], 0)
        .with_deadline(Duration::from_secs(60));
    let (res, buf) = ctx.block_on(read);
    assert_eq!(res.unwrap(), 5);
    assert_eq!(&buf[..5], b"ready");
    let path = common::tempfile("deadline");
    let write = ctx
        .write_at(path.file.as_raw_fd(), b"in time".to_vec(), 0)
        .with_deadline(Duration::from_secs(60));
    assert_eq!(ctx.block_on(write).0.unwrap(), 7);
}

/// Dropped before its deadline: cancelled like any dropped future; the timer goes
/// with the future, and the loop stays quiet afterwards.
#[test]
fn a_future_with_a_deadline_dropped_mid_flight() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("dropped with deadline", &ctx);
    let (r, w) = common::pipe();
    let mut read = Box::pin(
        ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0)
            .with_deadline(Duration::from_secs(60)),
    );
    assert!(common::poll_once(&mut read).is_pending());
    for _ in 0..3 {
        ctx.poll(false);
    }
    drop(read);
    for _ in 0..3 {
        ctx.poll(false);
    }
    common::write_fd(w.as_raw_fd(), b"x");
    let (res, _) = ctx.block_on(ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0));
    assert_eq!(res.unwrap(), 1, "the dropped read did not take the byte");
}

#[test]
fn a_deadline_from_a_task_spawned_by_a_bottom_half() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("deadline from a BH", &ctx);
    let (r, _w2) = common::pipe();
    let fd = r.as_raw_fd();
    let done = Arc::new(AtomicBool::new(false));
    let (c, d) = (ctx.clone(), done.clone());
    ctx.schedule_oneshot(move || {
        let c2 = c.clone();
        drop(c.spawn(async move {
            let (res, _) = c2.read_at(fd, vec![0u8; 4], 0).with_deadline(SHORT).await;
            assert_eq!(res.unwrap_err().kind(), io::ErrorKind::TimedOut);
            // SeqCst: read by the polling thread (no other pairing).
            d.store(true, Ordering::SeqCst);
        }));
    });
    while !done.load(Ordering::SeqCst) {
        ctx.poll(true);
    }
    drop(r);
}

/// A context dropped while a read with a far deadline waits in a task: the drop
/// completes it (`ECANCELED`, not `TimedOut`: the deadline did not pass) and returns.
#[test]
fn a_context_dropped_under_a_read_with_a_deadline() {
    let ctx = common::new_ctx();
    let (r, _w) = common::pipe();
    let fd = r.as_raw_fd();
    // A weak reference: a task that owned its context would keep it alive (a cycle the
    // context's drop never breaks, since the drop never comes).
    let c = Arc::downgrade(&ctx);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let task = ctx.spawn(async move {
        let read = c
            .upgrade()
            .expect("the context runs this task")
            .read_at(fd, vec![0u8; 4], 0)
            .with_deadline(Duration::from_secs(60));
        let (res, _) = read.await;
        *s.lock().unwrap() = Some(res.map_err(|e| e.kind()));
    });
    for _ in 0..5 {
        ctx.poll(false);
    }
    drop(task);
    let _watch = common::watchdog("context drop under a deadline", 30);
    let weak = Arc::downgrade(&ctx);
    drop(ctx);
    assert!(weak.upgrade().is_none(), "the context was not freed");
    // The task was cancelled with its future: the read's result went nowhere, and
    // nothing hangs.
    assert!(seen.lock().unwrap().is_none());
    drop(r);
}
