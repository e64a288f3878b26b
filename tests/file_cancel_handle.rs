//! `RingOp::cancel_handle`: cancelling one operation while its future stays alive, on
//! the back end this run selects (io_uring by default, `AIOCTX_BACKEND=epoll`) — from
//! the home thread, from another thread, from a BH, from inside a task, before the
//! first poll, racing the operation's completion, after it, and with the context gone.
//! A cancelled pipe read must give up its place: data written afterwards reaches the
//! next read, never the cancelled one's buffer.
#![cfg(not(loom))]

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::task::Poll;
use std::thread;
use std::time::Duration;

use aioctx::aio::AioContext;
use common::{Rescue, Watchdog, new_ctx, pipe, poll_once, write_fd};

/// How long a test waits for a cancel before it writes a rescue and fails.
const GRACE: Duration = Duration::from_secs(5);

fn is_cancelled(res: &std::io::Result<usize>) -> bool {
    matches!(res, Err(e) if e.raw_os_error() == Some(libc::ECANCELED))
}

/// Awaits `read` with a rescue write behind it, and checks it was cancelled.
fn expect_cancelled(ctx: &AioContext, read: aioctx::aio::RingOp<Vec<u8>>, w: RawFd, what: &str) {
    let rescue = Rescue::after(GRACE, move || write_fd(w, b"RESCUE"));
    let (res, _buf) = ctx.block_on(read);
    let fired = rescue.finish();
    assert!(
        !fired && is_cancelled(&res),
        "{what}: the read resolved with {res:?} (rescue needed: {fired}); a cancel was lost"
    );
}

/// The cancelled read gave up its place: data written now reaches a new read.
fn next_read_gets(ctx: &AioContext, r: RawFd, w: RawFd, what: &str) {
    write_fd(w, b"after");
    let (res, buf) = ctx.block_on(ctx.read_at(r, vec![0u8; 16], 0));
    let n = res.unwrap();
    assert_eq!(
        &buf[..n],
        b"after",
        "{what}: data went to the cancelled read"
    );
}

#[test]
fn cancel_on_the_home_thread() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    for round in 0..10 {
        let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut read).is_pending());
        ctx.poll(false);
        read.cancel_handle().cancel();
        let what = format!("round {round}");
        expect_cancelled(&ctx, read, w.as_raw_fd(), &what);
        next_read_gets(&ctx, r.as_raw_fd(), w.as_raw_fd(), &what);
    }
}

#[test]
fn cancel_before_the_first_poll_never_starts_it() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    write_fd(w.as_raw_fd(), b"early");
    let read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
    let handle = read.cancel_handle();
    handle.cancel();
    handle.cancel(); // twice: nothing more
    expect_cancelled(&ctx, read, w.as_raw_fd(), "before the first poll");
    let (res, buf) = ctx.block_on(ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0));
    assert_eq!(
        &buf[..res.unwrap()],
        b"early",
        "the cancelled read ran anyway"
    );
}

#[test]
fn cancel_from_another_thread() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    for round in 0..10 {
        let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut read).is_pending());
        let handle = read.cancel_handle();
        // The home thread may be polling, asleep, or not yet there: any of them.
        let t = thread::spawn(move || handle.clone().cancel());
        let what = format!("round {round}");
        expect_cancelled(&ctx, read, w.as_raw_fd(), &what);
        t.join().unwrap();
        next_read_gets(&ctx, r.as_raw_fd(), w.as_raw_fd(), &what);
    }
}

#[test]
fn cancel_from_a_bh_and_from_a_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
    assert!(poll_once(&mut read).is_pending());
    let handle = read.cancel_handle();
    ctx.schedule_oneshot(move || handle.cancel());
    expect_cancelled(&ctx, read, w.as_raw_fd(), "from a BH");
    next_read_gets(&ctx, r.as_raw_fd(), w.as_raw_fd(), "from a BH");

    // Inside a task: it starts the read, cancels it, and awaits the result itself.
    let c = ctx.clone();
    let fd = r.as_raw_fd();
    let rescue_fd = w.as_raw_fd();
    let rescue = Rescue::after(GRACE, move || write_fd(rescue_fd, b"RESCUE"));
    let res = ctx.block_on(ctx.spawn(async move {
        let read = c.read_at(fd, vec![0u8; 16], 0);
        let handle = read.cancel_handle();
        let mut read = Box::pin(read);
        std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
            Poll::Pending => Poll::Ready(()),
            Poll::Ready(_) => panic!("a read on an empty pipe completed"),
        })
        .await;
        handle.cancel();
        read.await.0
    }));
    assert!(!rescue.finish(), "from a task: the cancel was lost");
    assert!(is_cancelled(&res.unwrap()), "from a task: not cancelled");
    next_read_gets(&ctx, r.as_raw_fd(), w.as_raw_fd(), "from a task");
}

/// Data arrives, then the cancel: the read reports either its data (it completed
/// first) or `ECANCELED` (then the data stays in the pipe). Never lost.
#[test]
fn cancel_racing_completion_loses_no_data() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    for round in 0..50 {
        let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut read).is_pending());
        ctx.poll(false);
        write_fd(w.as_raw_fd(), b"data");
        if round % 2 == 1 {
            ctx.poll(false);
        }
        read.cancel_handle().cancel();
        let (res, buf) = ctx.block_on(read);
        match res {
            Ok(n) => assert_eq!(&buf[..n], b"data", "round {round}"),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                let (res, buf) = ctx.block_on(ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0));
                assert_eq!(&buf[..res.unwrap()], b"data", "round {round}: data lost");
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
}

#[test]
fn cancel_after_completion_does_nothing() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let file = common::tempfile("cancel-after");
    std::os::unix::fs::FileExt::write_all_at(&file.file, b"hello", 0).unwrap();
    let read = ctx.read_at(file.file.as_raw_fd(), vec![0u8; 16], 0);
    let handle = read.cancel_handle();
    let (res, buf) = ctx.block_on(read);
    assert_eq!(&buf[..res.unwrap()], b"hello");
    handle.cancel();
    ctx.poll(false);
}

#[test]
fn cancel_with_the_context_dropped() {
    let ctx = new_ctx();
    let (r, _w) = pipe();
    let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    let handle = read.cancel_handle();
    drop(ctx); // cancels and reaps what is in flight
    handle.cancel(); // nothing to do
    match poll_once(&mut read) {
        Poll::Ready((res, _)) => assert!(is_cancelled(&res), "{res:?}"),
        Poll::Pending => panic!("the read did not resolve with its context dropped"),
    }
    // A handle made after the drop does nothing either.
    let read = new_ctx().read_at(r.as_raw_fd(), vec![0u8; 16], 0);
    let handle = read.cancel_handle();
    drop(read);
    handle.cancel();
}
