//! Review probes (third round): ring setup flags across threads and nested polls,
//! `timeout()` edge durations and nesting, `AlignedBuf` extreme sizes, `PollParams`
//! changes at run time, and far-future timer deadlines. Each has a watchdog; the suite
//! runs on io_uring and again with `AIOCTX_BACKEND=epoll` (ring-only probes skip there).
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aioctx::aio::io_uring::{opcode, types};
use aioctx::aio::{
    AioContext, AioContextBuilder, AlignedBuf, Backend, ClockType, IoThread, PollParams,
    RingFeatures, timeout,
};
use common::{Watchdog, new_ctx, pipe, say_skipped, write_fd};

/// Pending `n` times (waking itself each time), then ready with `v`.
struct YieldN(u32, u32);

impl Future for YieldN {
    type Output = u32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        if self.0 == 0 {
            return Poll::Ready(self.1);
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn timeout_of_duration_max_does_not_elapse() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_max", &ctx);
    for d in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_nanos(u64::MAX),
    ] {
        assert_eq!(ctx.block_on(timeout(d, YieldN(20, 3))), Ok(3), "{d:?}");
    }
}

#[test]
fn timeout_of_zero_gives_a_ready_output_and_elapses_otherwise() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_zero", &ctx);
    assert_eq!(ctx.block_on(timeout(Duration::ZERO, async { 7 })), Ok(7));
    assert!(
        ctx.block_on(timeout(Duration::ZERO, std::future::pending::<()>()))
            .is_err()
    );
}

#[test]
fn nested_timeouts_report_the_inner_or_outer_expiry() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_nested", &ctx);
    let pending = || std::future::pending::<()>();
    let r = ctx.block_on(timeout(
        Duration::from_secs(3600),
        timeout(Duration::from_millis(1), pending()),
    ));
    assert!(matches!(r, Ok(Err(_))), "inner expiry: {r:?}");
    let r = ctx.block_on(timeout(
        Duration::from_millis(1),
        timeout(Duration::from_secs(3600), pending()),
    ));
    assert!(r.is_err(), "outer expiry: {r:?}");
}

#[test]
fn timeout_created_before_any_context_runs_on_the_one_that_polls_it() {
    let fut = timeout(Duration::from_millis(1), std::future::pending::<()>());
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_created_early", &ctx);
    assert!(ctx.block_on(fut).is_err());
}

#[test]
fn timeout_moved_to_another_context_after_its_first_poll() {
    // Polled once on A (arming A's timer), A dropped, finished on B.
    let ctx_a = new_ctx();
    let _dog = Watchdog::for_ctx("timeout_moved", &ctx_a);
    let mut fut = Box::pin(timeout(
        Duration::from_millis(2),
        std::future::pending::<()>(),
    ));
    let first = ctx_a.block_on(std::future::poll_fn(|cx| {
        Poll::Ready(fut.as_mut().poll(cx).is_pending())
    }));
    assert!(
        first,
        "a pending future's timeout is pending at its first poll"
    );
    drop(ctx_a);
    let ctx_b = new_ctx();
    assert!(ctx_b.block_on(fut).is_err());
}

#[test]
fn far_future_timer_deadlines_do_not_fire() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("far_timer", &ctx);
    let fired = Arc::new(AtomicU32::new(0));
    let f = Arc::clone(&fired);
    let timer = ctx.timer_new_with(ClockType::Realtime, move |_| {
        f.fetch_add(1, Ordering::Relaxed);
    });
    timer.modify_after(Duration::MAX);
    assert!(timer.pending());
    assert!(
        timer
            .remaining()
            .is_some_and(|r| r > Duration::from_secs(3600))
    );
    for _ in 0..3 {
        ctx.poll(false);
    }
    let far = Instant::now()
        .checked_add(Duration::from_secs(1 << 40))
        .expect("a far instant");
    timer.modify_at(far);
    for _ in 0..3 {
        ctx.poll(false);
    }
    assert_eq!(fired.load(Ordering::Relaxed), 0);
    // And it still fires when brought near.
    timer.modify_after(Duration::ZERO);
    while fired.load(Ordering::Relaxed) == 0 {
        ctx.poll(true);
    }
}

#[test]
fn aligned_buf_extreme_sizes_are_errors_not_panics() {
    assert!(AlignedBuf::new(1, 1 << (usize::BITS - 1)).is_err());
    assert!(AlignedBuf::new(usize::MAX, 4096).is_err());
    assert!(AlignedBuf::new(isize::MAX as usize, 1).is_err());
    assert!(AlignedBuf::new(4096, 0).is_err());
    assert!(AlignedBuf::new(4096, 3).is_err());
    let b = AlignedBuf::new(1, 1 << 20).expect("1 byte at 1 MiB");
    assert_eq!(b.as_ptr() as usize % (1 << 20), 0);
    assert_eq!(b.len(), 1);
}

/// QEMU's `aio_context_set_poll_params` restarts the polling time at 0: a lowered
/// maximum must bound the very next busy poll.
#[test]
fn lowering_the_poll_maximum_bounds_the_current_polling_time() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("poll_params_lowered", &ctx);
    ctx.set_poll_params(PollParams::up_to(Duration::from_secs(10)));
    let timer = ctx.timer_new(ClockType::Realtime, || {});
    while ctx.poll_ns() == 0 {
        timer.modify_after(Duration::from_micros(200));
        while timer.pending() {
            ctx.poll(true);
        }
    }
    ctx.set_poll_params(PollParams::up_to(Duration::from_nanos(1)));
    ctx.poll(false);
    assert!(
        ctx.poll_ns() <= 1,
        "poll_ns {} after the maximum was lowered to 1 ns",
        ctx.poll_ns()
    );
}

fn on_epoll() -> bool {
    std::env::var(aioctx::aio::BACKEND_ENV).is_ok_and(|v| v == "epoll")
}

fn ring_ctx(test: &str, builder: AioContextBuilder) -> Option<Arc<AioContext>> {
    common::try_uring_ctx(test, builder).unwrap_or_else(|e| {
        say_skipped(&format!("skipped {test}: {e}"));
        None
    })
}

fn deferred_setups() -> Vec<(&'static str, AioContextBuilder)> {
    let b = || AioContext::builder().coop_taskrun(false);
    vec![
        ("defer_taskrun", b().defer_taskrun(true)),
        (
            "defer_taskrun-taskrun_flag",
            b().defer_taskrun(true).taskrun_flag(false),
        ),
        ("coop_taskrun", b().coop_taskrun(true)),
        ("single_issuer", b().single_issuer(true)),
        (
            "sqpoll",
            AioContext::builder().sqpoll(Duration::from_millis(20)),
        ),
    ]
}

fn arm_read(ctx: &AioContext, fd: i32, on_done: impl FnOnce(i32) + Send + 'static) {
    let mut buf = Box::new([0u8; 1]);
    let entry = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 1).build();
    // SAFETY: the buffer is a heap box moved into the callback, which the loop keeps
    // until the CQE; `fd` is the test's pipe, open until after the completion.
    unsafe {
        ctx.submit_raw(
            entry,
            Box::new(move |res, _| {
                drop(buf);
                on_done(res);
            }),
        )
    }
    .unwrap();
}

/// A nested non-blocking poll inside a completion callback sees a completion made due
/// by that callback (the deferred task work is run by the nested enter).
#[test]
fn nested_poll_in_a_completion_callback_sees_a_due_completion() {
    for (name, builder) in deferred_setups() {
        let test = format!("nested_poll [{name}]");
        let Some(ctx) = ring_ctx(&test, builder) else {
            continue;
        };
        let _dog = Watchdog::for_ctx(&test, &ctx);
        let (ra, wa) = pipe();
        let (rb, wb) = pipe();
        let b_done = Arc::new(AtomicBool::new(false));
        let seen_nested = Arc::new(AtomicBool::new(false));
        let bd = Arc::clone(&b_done);
        arm_read(&ctx, rb.as_raw_fd(), move |res| {
            bd.store(res == 1, Ordering::Relaxed)
        });
        let (c, bd, sn) = (
            Arc::clone(&ctx),
            Arc::clone(&b_done),
            Arc::clone(&seen_nested),
        );
        let wbfd = wb.as_raw_fd();
        let sqpoll = ctx.ring_features().contains(RingFeatures::SQPOLL);
        arm_read(&ctx, ra.as_raw_fd(), move |_| {
            write_fd(wbfd, b"y");
            let mut polls = 0;
            while !bd.load(Ordering::Relaxed) && (polls < 1 || sqpoll) {
                c.poll(false);
                polls += 1;
            }
            sn.store(bd.load(Ordering::Relaxed), Ordering::Relaxed);
        });
        ctx.poll(false);
        write_fd(wa.as_raw_fd(), b"x");
        while !b_done.load(Ordering::Relaxed) {
            ctx.poll(true);
        }
        assert!(
            seen_nested.load(Ordering::Relaxed),
            "{test}: the nested poll(false) did not see B's due completion"
        );
    }
}

/// A context built on one thread and polled only on another: the single-issuer ring
/// must bind to the polling thread, and a full round (BH, timer, raw read, notify from
/// a third thread) works there.
#[test]
fn context_built_here_and_run_on_another_thread() {
    for (name, builder) in deferred_setups() {
        let test = format!("built_here_run_there [{name}]");
        let Some(ctx) = ring_ctx(&test, builder) else {
            continue;
        };
        let _dog = Watchdog::for_ctx(&test, &ctx);
        // The last reference goes to the thread the ring is bound to, which drops it
        // there (dropped elsewhere, a single-issuer ring leaks what is in flight: [S3]).
        let c = ctx;
        std::thread::spawn(move || {
            let (rd, wr) = pipe();
            let done = Arc::new(AtomicBool::new(false));
            let d = Arc::clone(&done);
            arm_read(&c, rd.as_raw_fd(), move |res| {
                d.store(res == 1, Ordering::Relaxed)
            });
            let bh_ran = Arc::new(AtomicBool::new(false));
            let b = Arc::clone(&bh_ran);
            c.schedule_oneshot(move || b.store(true, Ordering::Relaxed));
            let wfd = wr.as_raw_fd();
            std::thread::spawn(move || write_fd(wfd, b"x"))
                .join()
                .unwrap();
            while !(done.load(Ordering::Relaxed) && bh_ran.load(Ordering::Relaxed)) {
                c.poll(true);
            }
            drop(wr);
        })
        .join()
        .expect("the other thread ran the context");
    }
}

/// An IoThread on each deferred setup: a BH, a timer and a raw read from outside run.
#[test]
fn iothread_on_each_deferred_setup() {
    for (name, builder) in deferred_setups() {
        let test = format!("iothread [{name}]");
        if on_epoll() {
            say_skipped(&format!("skipped {test}: needs io_uring"));
            return;
        }
        let it = match IoThread::with_builder(name, builder.backend(Backend::IoUring)) {
            Ok(it) => it,
            Err(e) => {
                say_skipped(&format!("skipped {test}: {e}"));
                continue;
            }
        };
        let ctx = Arc::clone(it.ctx());
        let _dog = Watchdog::for_ctx(&test, &ctx);
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        let t = tx.clone();
        ctx.schedule_oneshot(move || t.send("bh").unwrap());
        let t = std::sync::Mutex::new(tx.clone());
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            t.lock().unwrap().send("timer").unwrap();
        });
        timer.modify_after(Duration::from_millis(1));
        let (rd, wr) = pipe();
        let t = tx.clone();
        arm_read(&ctx, rd.as_raw_fd(), move |res| {
            assert_eq!(res, 1);
            t.send("read").unwrap();
        });
        write_fd(wr.as_raw_fd(), b"x");
        let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, ["bh", "read", "timer"], "{test}");
        drop(timer);
        drop(it);
        drop(rd);
    }
}

/// An fd handler's POLL_ADD completing (from this or another thread's write) is seen by
/// one non-blocking poll on every deferred setup, the same as a raw read's completion;
/// and a busy-polling blocking poll wakes for it.
#[test]
fn fd_event_seen_by_one_nonblocking_poll_on_deferred_setups() {
    for (name, builder) in deferred_setups() {
        let test = format!("fd_event_nonblocking [{name}]");
        let Some(ctx) = ring_ctx(&test, builder) else {
            continue;
        };
        let _dog = Watchdog::for_ctx(&test, &ctx);
        let sqpoll = ctx.ring_features().contains(RingFeatures::SQPOLL);
        let e = Arc::new(aioctx::aio::EventNotifier::new().unwrap());
        let ran = Arc::new(AtomicU32::new(0));
        let (e2, r) = (Arc::clone(&e), Arc::clone(&ran));
        ctx.set_fd_handler(
            e.fd(),
            Some(Box::new(move || {
                if e2.test_and_clear().unwrap() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            })),
            None,
        )
        .unwrap();
        ctx.poll(false); // arm the POLL_ADD
        for (round, other_thread) in [false, true, false, true].into_iter().enumerate() {
            let want = round as u32 + 1;
            if other_thread {
                let e3 = Arc::clone(&e);
                std::thread::spawn(move || e3.set().unwrap())
                    .join()
                    .unwrap();
            } else {
                e.set().unwrap();
            }
            let mut polls = 0;
            while ran.load(Ordering::Relaxed) < want {
                assert!(
                    polls < 1 || sqpoll,
                    "{test}: poll(false) did not see a due fd event (round {round})"
                );
                ctx.poll(false);
                polls += 1;
            }
        }
        // Busy polling on: a blocking poll whose event arrives from another thread.
        ctx.set_poll_params(PollParams::up_to(Duration::from_millis(5)));
        for round in 0..20u32 {
            let want = ran.load(Ordering::Relaxed) + 1;
            let e3 = Arc::clone(&e);
            let setter = std::thread::spawn(move || {
                if round % 2 == 0 {
                    std::thread::yield_now();
                }
                e3.set().unwrap();
            });
            while ran.load(Ordering::Relaxed) < want {
                ctx.poll(true);
            }
            setter.join().unwrap();
        }
        ctx.set_fd_handler(e.fd(), None, None).unwrap();
    }
}

/// `timeout` around a pipe read into an `AlignedBuf`, in a task, on every deferred
/// setup: the read is cancelled at expiry (its CQE arrives only through a GETEVENTS
/// enter there), does not take data written afterwards, and the buffer is reusable.
#[test]
fn timeout_cancels_a_read_on_deferred_setups() {
    for (name, builder) in deferred_setups() {
        let test = format!("timeout_read [{name}]");
        let Some(ctx) = ring_ctx(&test, builder) else {
            continue;
        };
        let _dog = Watchdog::for_ctx(&test, &ctx);
        let (rd, wr) = pipe();
        let fd = rd.as_raw_fd();
        for _ in 0..3 {
            let c = Arc::clone(&ctx);
            let task = ctx.spawn(async move {
                let buf = AlignedBuf::new(4096, 4096).unwrap();
                timeout(Duration::from_millis(2), c.read_at(fd, buf, 0)).await
            });
            assert!(ctx.block_on(task).unwrap().is_err(), "{test}: nobody wrote");
        }
        // Let the cancels' CQEs in, then the data must go to the next read — except
        // under SQPOLL, whose kernel thread takes the cancels when it gets to them
        // (documented on `AioContextBuilder::sqpoll`): a cancelled read may take it.
        while ctx.poll(false) {}
        if name == "sqpoll" {
            continue;
        }
        write_fd(wr.as_raw_fd(), b"ok");
        let c = Arc::clone(&ctx);
        let task = ctx.spawn(async move {
            let buf = AlignedBuf::new(4096, 4096).unwrap();
            timeout(Duration::from_secs(20), c.read_at(fd, buf, 0)).await
        });
        let (res, buf) = ctx.block_on(task).unwrap().expect("data was written");
        assert_eq!(res.unwrap(), 2, "{test}: a cancelled read took the data");
        assert_eq!(&buf[..2], b"ok");
    }
}

/// `wait_while` on a deferred-setup context from its own home thread: a kick from
/// another thread, racing the waiter's registration, always ends the wait (the kick
/// notifies the context, whose eventfd read completes only through a GETEVENTS enter
/// there).
#[test]
fn wait_while_on_a_deferred_context_is_woken_by_a_racing_kick() {
    for (name, builder) in deferred_setups() {
        let test = format!("wait_while_kick [{name}]");
        let Some(ctx) = ring_ctx(&test, builder) else {
            continue;
        };
        let _dog = Watchdog::for_ctx(&test, &ctx);
        // The last reference goes to the thread the ring is bound to, which drops it
        // there (dropped elsewhere, a single-issuer ring leaks what is in flight: [S3]).
        let c = ctx;
        std::thread::spawn(move || {
            c.poll(false); // this thread is its home now
            for round in 0..200u32 {
                let flag = Arc::new(AtomicBool::new(false));
                let f = Arc::clone(&flag);
                let kicker = std::thread::spawn(move || {
                    if round % 2 == 0 {
                        std::thread::yield_now();
                    }
                    f.store(true, Ordering::Release);
                    aioctx::wait::kick();
                });
                aioctx::wait::wait_while(Some(&c), || !flag.load(Ordering::Acquire));
                kicker.join().unwrap();
            }
        })
        .join()
        .expect("the waiting thread");
    }
}

/// `AlignedBuf::for_file` on descriptors that are not files for `O_DIRECT` (a pipe,
/// `/dev/null`, a directory) and with a zero length: an error or a usable buffer, never
/// a panic.
#[test]
fn aligned_buf_for_odd_descriptors_never_panics() {
    let (rd, _wr) = pipe();
    let null = std::fs::File::open("/dev/null").unwrap();
    let dir = std::fs::File::open("/").unwrap();
    for (what, fd) in [
        ("pipe", rd.as_raw_fd()),
        ("/dev/null", null.as_raw_fd()),
        ("/", dir.as_raw_fd()),
    ] {
        // SAFETY: the descriptors live until the end of this test.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        for len in [0usize, 1, 4096] {
            match AlignedBuf::for_file(borrowed, len) {
                Ok(buf) => {
                    assert_eq!(buf.len(), len, "{what}");
                    assert_eq!(buf.as_ptr() as usize % buf.align(), 0, "{what}");
                }
                Err(e) => assert!(!e.to_string().is_empty(), "{what}: {e}"),
            }
        }
        assert!(
            AlignedBuf::for_file(borrowed, 0).is_err(),
            "{what}: length 0"
        );
    }
}

/// A context run on one thread, with a task's pipe read (under a `timeout`) in flight,
/// dropped on another thread after the first exited: a single-issuer ring cannot be
/// entered there, so the drop must leak the read (never panic, never free its buffer
/// under the kernel), on every deferred setup.
#[test]
fn context_with_task_io_dropped_after_its_thread_exited() {
    for (name, builder) in deferred_setups() {
        let test = format!("task_io_dropped_elsewhere [{name}]");
        let Some(ctx) = ring_ctx(&test, builder) else {
            continue;
        };
        let _dog = Watchdog::for_ctx(&test, &ctx);
        let (rd, wr) = pipe();
        let fd = rd.as_raw_fd();
        let c = Arc::clone(&ctx);
        std::thread::spawn(move || {
            // The task holds no `Arc` of its context (that cycle would keep it alive).
            let task = c.spawn(async move {
                let buf = AlignedBuf::new(4096, 4096).unwrap();
                let op = aioctx::aio::current().read_at(fd, buf, 0);
                let _ = timeout(Duration::from_secs(3600), op).await;
            });
            // Submit the read: a few polls, nobody writes.
            for _ in 0..3 {
                c.poll(false);
            }
            drop(task); // detached: the task stays in flight
        })
        .join()
        .expect("the running thread");
        let weak = Arc::downgrade(&ctx);
        drop(ctx);
        assert!(
            weak.upgrade().is_none(),
            "{test}: the context was not freed"
        );
        // The pipe outlives the leaked read.
        std::mem::forget(rd);
        drop(wr);
    }
}
