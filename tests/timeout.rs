//! `timeout` on both back ends: a pipe read nobody writes to is timed out and cancelled
//! (a later read still gets the data) in a task and in a task spawned by a callback;
//! a context dropped under a pending timeout frees everything; a timeout racing its
//! read's completion gives either the data or `Elapsed`, and every buffer is freed
//! exactly once (a live-buffer counter, per test).
#![cfg(not(loom))]

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use aioctx::aio::{AioContext, Elapsed, IoBuf, IoBufMut, timeout};
use common::{Rng, Watchdog, new_ctx, pipe, poll_once, wait_until, write_fd};

/// Buffers made and freed by one test.
#[derive(Default)]
struct Live {
    made: AtomicUsize,
    freed: AtomicUsize,
}

impl Live {
    fn buf(self: &Arc<Self>, len: usize) -> Tracked {
        self.made.fetch_add(1, Ordering::Relaxed);
        Tracked(vec![0; len], Arc::clone(self))
    }
    fn all_freed(&self) -> bool {
        self.made.load(Ordering::Relaxed) == self.freed.load(Ordering::Relaxed)
    }
}

/// A buffer that counts its drop.
struct Tracked(Vec<u8>, Arc<Live>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.freed.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: delegates to the Vec, whose heap bytes do not move with the value.
unsafe impl IoBuf for Tracked {
    fn stable_ptr(&self) -> *const u8 {
        self.0.stable_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.bytes_init()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for Tracked {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.0.stable_mut_ptr()
    }
}

/// Polls `ctx` until every buffer of `live` is freed (the cancelled read's final
/// completion frees its buffer).
fn until_freed(ctx: &AioContext, live: &Live) {
    while !live.all_freed() {
        ctx.poll(true);
    }
}

/// A read nobody writes to, timed out in a task; the cancelled read did not take the
/// data written afterwards.
#[test]
fn timeout_cancels_a_pipe_read_in_a_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_in_a_task", &ctx);
    let live = Arc::new(Live::default());
    let (rd, wr) = pipe();
    let fd = rd.as_raw_fd();
    let c = Arc::clone(&ctx);
    let l = Arc::clone(&live);
    let task = ctx
        .spawn(async move { timeout(Duration::from_millis(5), c.read_at(fd, l.buf(4), 0)).await });
    let res = ctx.block_on(task).unwrap();
    let e: Elapsed = res.err().expect("nobody writes: the read times out");
    assert_eq!(e.duration(), Duration::from_millis(5));
    assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::TimedOut);
    until_freed(&ctx, &live);
    write_fd(wr.as_raw_fd(), b"ok");
    let c = Arc::clone(&ctx);
    let task = ctx.spawn(async move { c.read_at(fd, vec![0; 4], 0).await });
    let (res, buf) = ctx.block_on(task).unwrap();
    assert_eq!(
        res.unwrap(),
        2,
        "the timed-out read must not have taken the data"
    );
    assert_eq!(&buf[..2], b"ok");
}

/// The same from a task spawned by a bottom half (a callback), and by `block_on`
/// directly.
#[test]
fn timeout_in_a_callback_spawned_task_and_in_block_on() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_in_a_callback", &ctx);
    let live = Arc::new(Live::default());
    let (rd, _wr) = pipe();
    let fd = rd.as_raw_fd();
    let done = Arc::new(AtomicUsize::new(0));
    let (c, l, d) = (Arc::clone(&ctx), Arc::clone(&live), Arc::clone(&done));
    ctx.schedule_oneshot(move || {
        let c2 = Arc::clone(&c);
        c.spawn(async move {
            let r = timeout(Duration::from_millis(2), c2.read_at(fd, l.buf(8), 0)).await;
            assert!(r.is_err());
            d.fetch_add(1, Ordering::Relaxed);
        })
        .detach();
    });
    while done.load(Ordering::Relaxed) == 0 {
        ctx.poll(true);
    }
    until_freed(&ctx, &live);
    // A fresh pipe (the same pipe again is the test below).
    let (rd2, _wr2) = pipe();
    let r = ctx.block_on(timeout(
        Duration::from_millis(2),
        ctx.read_at(rd2.as_raw_fd(), live.buf(8), 0),
    ));
    assert!(r.is_err(), "{:?}", r.map(|(res, _)| res));
    until_freed(&ctx, &live);
}

/// Futures that are not I/O: ready first wins, pending times out.
#[test]
fn timeout_of_plain_futures() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_plain", &ctx);
    assert_eq!(
        ctx.block_on(timeout(Duration::ZERO, async { 3 })),
        Ok(3),
        "a ready future gives its output even with a zero deadline"
    );
    assert!(
        ctx.block_on(timeout(Duration::ZERO, std::future::pending::<()>()))
            .is_err()
    );
    // Nested: the inner deadline passes first.
    let r = ctx.block_on(timeout(
        Duration::from_secs(30),
        timeout(Duration::from_millis(1), std::future::pending::<()>()),
    ));
    assert!(matches!(r, Ok(Err(_))));
}

/// The context goes away while a task waits on a timeout around a read: the task is
/// cancelled, the read with it, and its buffer freed by the drop.
#[test]
fn context_dropped_under_a_pending_timeout() {
    let live = Arc::new(Live::default());
    let (rd, _wr) = pipe();
    let ctx = new_ctx();
    let dog = Watchdog::for_ctx("context_dropped_under_timeout", &ctx);
    let read = ctx.read_at(rd.as_raw_fd(), live.buf(4), 0);
    let mut handle = ctx.spawn(timeout(Duration::from_secs(60), read));
    // Run the task until its read is in flight and it waits.
    ctx.poll(false);
    ctx.poll(false);
    assert!(poll_once(&mut handle).is_pending());
    drop(ctx);
    drop(dog);
    match poll_once(&mut handle) {
        Poll::Ready(Err(e)) => assert!(e.is_cancelled(), "{e}"),
        other => panic!(
            "the task should be cancelled by the drop: {:?}",
            other.is_ready()
        ),
    }
    assert!(
        live.all_freed(),
        "the drop reaped the read and freed its buffer"
    );
}

/// A deadline racing the read's completion (data written by another thread after a
/// random spin): the data, or `Elapsed`; never both, never a hang, every buffer freed.
#[test]
fn timeout_racing_completion() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_racing_completion", &ctx);
    let live = Arc::new(Live::default());
    let mut rng = Rng::new(0x7133);
    let (mut ok, mut elapsed) = (0, 0);
    for _ in 0..200 {
        let (rd, wr) = pipe();
        let spin = rng.below(20_000);
        let deadline = Duration::from_micros(rng.below(300) as u64);
        let wfd = wr.as_raw_fd();
        let writer = std::thread::spawn(move || {
            for _ in 0..spin {
                std::hint::spin_loop();
            }
            write_fd(wfd, b"x");
        });
        let read = ctx.read_at(rd.as_raw_fd(), live.buf(1), 0);
        match ctx.block_on(timeout(deadline, read)) {
            Ok((res, buf)) => {
                assert_eq!(res.unwrap(), 1);
                assert_eq!(buf.0, b"x");
                ok += 1;
            }
            Err(_) => elapsed += 1,
        }
        writer.join().unwrap();
        until_freed(&ctx, &live);
        drop((rd, wr));
    }
    assert_eq!(ok + elapsed, 200);
    wait_until("every buffer freed", || live.all_freed());
}

/// Regression (epoll back end, stream reads): after a read on a pipe in a task
/// spawned by a bottom half timed out (its future dropped), a read on the same pipe
/// from `block_on` failed with `EEXIST` (the descriptor was still registered with epoll)
/// instead of waiting, even once the dropped read's buffer was freed (the stream table
/// closed its duplicate before deleting its epoll interest; [SM1] in backend/streams.rs).
#[test]
fn read_after_a_timed_out_read_in_a_callback_spawned_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("read_after_timed_out_read", &ctx);
    let (rd, wr) = pipe();
    let fd = rd.as_raw_fd();
    let done = Arc::new(AtomicUsize::new(0));
    let (c, d) = (Arc::clone(&ctx), Arc::clone(&done));
    ctx.schedule_oneshot(move || {
        let c2 = Arc::clone(&c);
        c.spawn(async move {
            let r = timeout(Duration::from_millis(2), c2.read_at(fd, vec![0; 8], 0)).await;
            assert!(r.is_err());
            d.fetch_add(1, Ordering::Relaxed);
        })
        .detach();
    });
    while done.load(Ordering::Relaxed) == 0 {
        ctx.poll(true);
    }
    // Nobody writes yet: the second read must wait (and time out), not fail.
    let r = ctx.block_on(timeout(
        Duration::from_millis(2),
        ctx.read_at(fd, vec![0; 8], 0),
    ));
    assert!(r.is_err(), "{:?}", r.map(|(res, _)| res));
    write_fd(wr.as_raw_fd(), b"late");
    let (res, buf) = ctx.block_on(ctx.read_at(fd, vec![0; 8], 0));
    assert_eq!(res.expect("a third read on the same pipe"), 4);
    assert_eq!(&buf[..4], b"late");
}
