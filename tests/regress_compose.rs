//! Where the pieces compose (raw SQEs and the loop's own operations, stream I/O and
//! descriptor reuse, tasks and context drop, the graph lock and IoThreads, panics in
//! callbacks): adversarial probes, each named `probe_<what it tries>`, kept as
//! regression tests once what they found was fixed. A test that would hang instead runs a
//! "rescue" after a long grace period (it unblocks the wait from outside) and fails
//! with a diagnosis; the watchdog aborts whatever the rescue cannot unblock.
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread;
use std::time::Duration;

use aioctx::aio::io_uring::{opcode, squeue, types};
use aioctx::aio::{AioContext, ClockType, CoMutex, IoThread};
use common::{Rescue, Watchdog, new_ctx, pipe, poll_once, write_fd};

/// How long a probe waits before it declares a hang and runs its rescue.
const GRACE: Duration = Duration::from_secs(8);

fn is_epoll() -> bool {
    std::env::var(aioctx::aio::BACKEND_ENV).is_ok_and(|v| v == "epoll")
}

// ---------------------------------------------------------------------------------
// Raw SQEs against the loop's own, always-armed operations.
// ---------------------------------------------------------------------------------

/// `IOSQE_IO_DRAIN` is accepted by `raw::check`, but the loop always keeps its eventfd
/// read in flight: a drained entry waits for that read, i.e. for some other thread to
/// notify the context. On a context nobody else touches, the entry never completes,
/// and every entry queued after it (a safe `read_at` here) is deferred too.
#[test]
fn probe_raw_io_drain_stalls_behind_the_loops_own_read() {
    let Some(ctx) = common::uring_ctx("probe_raw_io_drain", AioContext::builder()) else {
        return;
    };
    let _dog = Watchdog::on_ctx(&ctx);
    let done = Arc::new(AtomicI32::new(i32::MIN));
    let d = Arc::clone(&done);
    // SAFETY: a NOP names no memory.
    let res = unsafe {
        ctx.submit_raw(
            opcode::Nop::new().build().flags(squeue::Flags::IO_DRAIN),
            Box::new(move |res, _| d.store(res, Ordering::SeqCst)),
        )
    };
    if let Err(e) = res {
        // Refusing it is a correct answer.
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        return;
    }
    // A safe operation queued after it.
    let f = common::tempfile("drain");
    let read = ctx.read_at(f.file.as_raw_fd(), vec![0u8; 16], 0);
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    let (r, _buf) = ctx.block_on(read);
    r.unwrap();
    while done.load(Ordering::SeqCst) == i32::MIN {
        ctx.poll(true);
    }
    assert!(
        !rescue.fired(),
        "an accepted IO_DRAIN NOP and a later read_at completed only once another thread \
         notified the context (they waited behind the loop's eventfd read)"
    );
}

/// Worse: a drained entry behind a user's long-lived POLL_ADD also defers the loop's
/// re-armed eventfd read, so after one cross-thread wake every later one is lost.
#[test]
fn probe_raw_io_drain_loses_cross_thread_wakes() {
    let Some(ctx) = common::uring_ctx("probe_raw_io_drain_wakes", AioContext::builder()) else {
        return;
    };
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let polled = Arc::new(AtomicBool::new(false));
    let p = Arc::clone(&polled);
    // SAFETY: a POLL_ADD names no memory; the pipe outlives the context (dropped last).
    let res = unsafe {
        ctx.submit_raw(
            opcode::PollAdd::new(types::Fd(r.as_raw_fd()), libc::POLLIN as u32).build(),
            Box::new(move |_, _| p.store(true, Ordering::SeqCst)),
        )
    };
    res.unwrap();
    // SAFETY: a NOP names no memory.
    let res = unsafe {
        ctx.submit_raw(
            opcode::Nop::new().build().flags(squeue::Flags::IO_DRAIN),
            Box::new(|_, _| {}),
        )
    };
    if res.is_err() {
        return; // refused: fine
    }
    ctx.poll(false);
    let ran = Arc::new(AtomicUsize::new(0));
    for round in 1..=3 {
        let c = Arc::clone(&ctx);
        let r2 = Arc::clone(&ran);
        let n = ctx.stats().sleeps + 1;
        let t = thread::spawn(move || {
            common::wait_asleep(&c, n);
            c.schedule_oneshot(move || {
                r2.fetch_add(1, Ordering::SeqCst);
            });
        });
        let wfd = w.as_raw_fd();
        let rescue = Rescue::after(GRACE, move || write_fd(wfd, b"x"));
        while ran.load(Ordering::SeqCst) < round {
            ctx.poll(true);
        }
        t.join().unwrap();
        assert!(
            !rescue.fired(),
            "round {round}: a BH scheduled from another thread did not wake the sleeping \
             loop until an unrelated user poll completed (the eventfd read was deferred \
             behind an accepted IO_DRAIN entry)"
        );
    }
    drop(ctx);
    drop((r, w));
}

/// A user `ASYNC_CANCEL` with `IORING_ASYNC_CANCEL_ANY` reaches the loop's eventfd read
/// and an fd handler's poll; both must be armed again ([RW3] (`backend/raw.rs`)).
#[test]
fn probe_raw_cancel_any_leaves_the_loop_working() {
    let Some(ctx) = common::uring_ctx("probe_raw_cancel_any", AioContext::builder()) else {
        return;
    };
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let rfd = r.as_raw_fd();
    ctx.set_fd_handler(
        rfd,
        Some(Box::new(move || {
            let mut b = [0u8; 16];
            // SAFETY: reading into a local buffer.
            unsafe { libc::read(rfd, b.as_mut_ptr().cast(), 16) };
            h.fetch_add(1, Ordering::SeqCst);
        })),
        None,
    )
    .unwrap();
    ctx.poll(false);
    let res = Arc::new(AtomicI32::new(i32::MIN));
    let r2 = Arc::clone(&res);
    const CANCEL_ANY: u32 = 1 << 2;
    const CANCEL_ALL: u32 = 1 << 0;
    // SAFETY: an ASYNC_CANCEL names no memory.
    let sub = unsafe {
        ctx.submit_raw(
            opcode::AsyncCancel2::new(types::CancelBuilder::any()).build(),
            Box::new(move |res, _| r2.store(res, Ordering::SeqCst)),
        )
    };
    let _ = (CANCEL_ANY, CANCEL_ALL);
    if sub.is_err() {
        return;
    }
    while res.load(Ordering::SeqCst) == i32::MIN {
        ctx.poll(true);
    }
    // The fd handler still fires.
    write_fd(w.as_raw_fd(), b"a");
    let wfd = w.as_raw_fd();
    let rescue = Rescue::after(GRACE, move || write_fd(wfd, b"b"));
    while hits.load(Ordering::SeqCst) == 0 {
        ctx.poll(true);
    }
    assert!(
        !rescue.fired(),
        "fd handler did not fire after a cancel-any"
    );
    drop(rescue);
    // A cross-thread wake still wakes the loop.
    let ran = Arc::new(AtomicBool::new(false));
    let c = Arc::clone(&ctx);
    let r3 = Arc::clone(&ran);
    let n = ctx.stats().sleeps + 1;
    let t = thread::spawn(move || {
        common::wait_asleep(&c, n);
        c.schedule_oneshot(move || r3.store(true, Ordering::SeqCst));
    });
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    while !ran.load(Ordering::SeqCst) {
        ctx.poll(true);
    }
    t.join().unwrap();
    assert!(!rescue.fired(), "cross-thread wake lost after a cancel-any");
    ctx.set_fd_handler(rfd, None, None).unwrap();
    drop(ctx);
}

/// A user `POLL_REMOVE` / `ASYNC_CANCEL` naming an internal `user_data` is refused; the
/// same naming a plausible user slot of a *safe* `read_at` is accepted (the read then
/// completes with ECANCELED and the buffer comes back).
#[test]
fn probe_raw_cancel_of_a_safe_read_gives_the_buffer_back() {
    let Some(ctx) = common::uring_ctx("probe_raw_cancel_safe", AioContext::builder()) else {
        return;
    };
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    // Cancel everything on the pipe's fd (the safe read included).
    let res = Arc::new(AtomicI32::new(i32::MIN));
    let r2 = Arc::clone(&res);
    // SAFETY: an ASYNC_CANCEL names no memory.
    unsafe {
        ctx.submit_raw(
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(r.as_raw_fd())).all())
                .build(),
            Box::new(move |res, _| r2.store(res, Ordering::SeqCst)),
        )
    }
    .unwrap();
    let (out, buf) = ctx.block_on(read);
    assert_eq!(buf.len(), 8);
    let e = out.expect_err("cancelled read");
    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
    drop((ctx, r, w));
}

// ---------------------------------------------------------------------------------
// Stream I/O: descriptor numbers reused while an abandoned operation waits.
// ---------------------------------------------------------------------------------

/// A read future on a pipe is dropped (abandoned) while it waits, the pipe's read end is
/// closed, and a new pipe gets the same descriptor number. A read on the new pipe must
/// read the new pipe. On epoll the stream table keys its queues (and its `dup` of the
/// file) by descriptor number, so the new read waits on the OLD pipe.
#[test]
fn probe_stream_read_after_fd_number_reuse() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (ra, wa) = pipe();
    let num = ra.as_raw_fd();
    {
        let mut read = ctx.read_at(num, vec![0u8; 8], 0);
        assert!(poll_once(&mut read).is_pending());
        ctx.poll(false);
        drop(read);
    }
    // Close `num` and give it to a new pipe's read end in one step (dup2), so that no
    // other test thread can take the number in between; `ra` owns `num`, now the new
    // pipe's, from here on.
    let (rb, wb) = pipe();
    // SAFETY: `num` is ours (`ra`); dup2 replaces the file it names with rb's.
    assert_eq!(unsafe { libc::dup2(rb.as_raw_fd(), num) }, num);
    let rb2 = (ra, rb);
    write_fd(wb.as_raw_fd(), b"new");
    let wafd = wa.as_raw_fd();
    let rescue = Rescue::after(GRACE, move || write_fd(wafd, b"OLD"));
    let (res, buf) = ctx.block_on(ctx.read_at(num, vec![0u8; 8], 0));
    let n = res.unwrap();
    let fired = rescue.fired();
    drop(rescue);
    assert!(
        !fired && &buf[..n] == b"new",
        "a read on the new pipe (same fd number) returned {:?} and needed rescue={fired} \
         (the old pipe's data was written by the rescue)",
        String::from_utf8_lossy(&buf[..n])
    );
    drop((ctx, rb2, wa, wb));
}

/// Many stream ops on one fd: some abandoned, some completed, the context dropped with
/// the rest in flight: every future that completes reports a sane result; none hangs.
#[test]
fn probe_stream_many_ops_one_fd_then_drop_context() {
    for round in 0..20 {
        let ctx = new_ctx();
        let _dog = Watchdog::on_ctx(&ctx);
        let (r, w) = pipe();
        let mut futs: Vec<_> = (0..16)
            .map(|_| Box::pin(ctx.read_at(r.as_raw_fd(), vec![0u8; 4], 0)))
            .collect();
        for f in &mut futs {
            assert!(poll_once(f).is_pending());
        }
        ctx.poll(false);
        write_fd(w.as_raw_fd(), b"abcdefgh");
        // Drop every third future.
        let mut kept = Vec::new();
        for (i, f) in futs.into_iter().enumerate() {
            if i % 3 != round % 3 {
                kept.push(f);
            }
        }
        ctx.poll(false);
        ctx.poll(false);
        let c = Arc::clone(&ctx);
        drop(ctx);
        drop(c); // the context is gone now
        let mut got = 0usize;
        for f in kept {
            let mut f = f;
            match poll_once(&mut f) {
                Poll::Ready((Ok(n), _)) => got += n,
                Poll::Ready((Err(e), _)) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}")
                }
                Poll::Pending => panic!("a read future is pending after its context dropped"),
            }
        }
        // Data read by completed ops is reported; what's left stays in the pipe.
        let mut rest = [0u8; 16];
        // SAFETY: nonblocking read into a local buffer.
        unsafe {
            libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        }
        // SAFETY: as above.
        let left = unsafe { libc::read(r.as_raw_fd(), rest.as_mut_ptr().cast(), 16) };
        let left = left.max(0) as usize;
        // Abandoned ops may have consumed data (only on io_uring, where the kernel op
        // ran); the kept ones must account for everything on epoll.
        if is_epoll() {
            assert_eq!(got + left, 8, "round {round}: data lost on epoll");
        }
    }
}

// ---------------------------------------------------------------------------------
// Tasks, JoinHandles and context drop.
// ---------------------------------------------------------------------------------

#[test]
fn probe_join_handle_awaited_on_another_context_after_drop() {
    let a = new_ctx();
    let b = new_ctx();
    let _dog = Watchdog::on_ctx(&b);
    let h = a.spawn(std::future::pending::<u32>());
    a.poll(false);
    drop(a);
    let r = b.block_on(h);
    assert!(
        r.is_err_and(|e| e.is_cancelled()),
        "a pending task of a dropped context"
    );
}

/// A task that waits on a handle of a task of another context, both cancelled by the
/// other context's drop while the waiter is parked.
#[test]
fn probe_join_handle_waiter_parked_when_other_context_drops() {
    let a = new_ctx();
    let b = new_ctx();
    let _dog = Watchdog::on_ctx(&b);
    let h = a.spawn(std::future::pending::<u32>());
    let waiter = b.spawn(async move { h.await.is_err() });
    b.poll(false);
    a.poll(false);
    drop(a);
    let c = Arc::clone(&b);
    let rescue = Rescue::after(GRACE, move || c.notify());
    let r = b.block_on(waiter).unwrap();
    assert!(r, "the handle of a cancelled task resolved Ok");
    assert!(
        !rescue.fired(),
        "cancellation did not wake the waiting task"
    );
}

/// A task on an IoThread holds a CoMutex guard and parks; a task on another context
/// waits for the mutex; dropping the IoThread cancels the holder, whose guard drop must
/// hand the mutex over and wake the waiter.
#[test]
fn probe_comutex_holder_cancelled_by_iothread_drop() {
    let iot = IoThread::new("probe-comutex").unwrap();
    let main = new_ctx();
    let _dog = Watchdog::on_ctx(&main);
    let m = Arc::new(CoMutex::new(0u32));
    let held = Arc::new(AtomicBool::new(false));
    let (m1, h1) = (Arc::clone(&m), Arc::clone(&held));
    let holder = iot.ctx().spawn(async move {
        let _g = m1.lock().await;
        h1.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    });
    common::wait_until("the holder has the lock", || held.load(Ordering::SeqCst));
    let m2 = Arc::clone(&m);
    let waiter = main.spawn(async move {
        let mut g = m2.lock().await;
        *g += 1;
        *g
    });
    main.poll(false);
    drop(iot);
    let c = Arc::clone(&main);
    let rescue = Rescue::after(GRACE, move || c.notify());
    let v = main.block_on(waiter).unwrap();
    assert_eq!(v, 1);
    assert!(!rescue.fired(), "the waiter was not woken by the hand-off");
    assert!(main.block_on(holder).is_err());
}

/// `Sleep` in a task cancelled by the context's drop: the timer it armed is freed, no
/// panic.
#[test]
fn probe_sleep_in_task_cancelled_by_drop() {
    let a = new_ctx();
    let h = a.spawn(async {
        aioctx::aio::sleep(Duration::from_secs(3600)).await;
    });
    a.poll(false);
    drop(a);
    assert!(h.is_finished());
}

/// A `Sleep` first polled on context `b` (its timer lives there), `b` dropped, then the
/// `Sleep` awaited on context `c`: it must complete (or panic with a message), never
/// stay pending for good with nothing that can wake it.
#[test]
fn probe_sleep_outliving_its_context_never_completes() {
    let b = new_ctx();
    let c = new_ctx();
    let _dog = Watchdog::on_ctx(&c);
    let mut s = Box::pin(aioctx::aio::sleep(Duration::from_millis(1)));
    b.block_on(std::future::poll_fn(|cx| {
        assert!(s.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    }));
    drop(b);
    let gave_up = Arc::new(AtomicBool::new(false));
    let waker: Arc<Mutex<Option<std::task::Waker>>> = Arc::new(Mutex::new(None));
    let (g, w) = (Arc::clone(&gave_up), Arc::clone(&waker));
    let rescue = Rescue::after(GRACE, move || {
        g.store(true, Ordering::SeqCst);
        if let Some(w) = w.lock().unwrap().take() {
            w.wake();
        }
    });
    let r = catch_unwind(AssertUnwindSafe(|| {
        c.block_on(std::future::poll_fn(|cx| {
            *waker.lock().unwrap() = Some(cx.waker().clone());
            if s.as_mut().poll(cx).is_ready() {
                Poll::Ready(true)
            } else if gave_up.load(Ordering::SeqCst) {
                Poll::Ready(false)
            } else {
                Poll::Pending
            }
        }))
    }));
    drop(rescue);
    if let Ok(done) = r {
        assert!(
            done,
            "a 1 ms Sleep armed on a context that was then dropped was still pending after \
             {GRACE:?} on another context: nothing can ever wake it"
        );
    }
}

/// block_on nested in a BH, run by a poll nested in a task.
#[test]
fn probe_block_on_in_bh_in_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let out = Arc::new(AtomicUsize::new(0));
    let (c, o) = (Arc::clone(&ctx), Arc::clone(&out));
    let h = ctx.spawn(async move {
        let (c2, o2) = (Arc::clone(&c), Arc::clone(&o));
        c.schedule_oneshot(move || {
            let v = c2.block_on(c2.spawn(async { 7usize })).unwrap();
            o2.store(v, Ordering::SeqCst);
        });
        while o.load(Ordering::SeqCst) == 0 {
            c.poll(true);
        }
    });
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    ctx.block_on(h).unwrap();
    assert_eq!(out.load(Ordering::SeqCst), 7);
    assert!(!rescue.fired());
}

/// shutdown_tasks racing spawns from another thread: every handle resolves.
#[test]
fn probe_shutdown_tasks_racing_remote_spawn() {
    for _ in 0..20 {
        let ctx = new_ctx();
        let _dog = Watchdog::on_ctx(&ctx);
        let c = Arc::clone(&ctx);
        let t = thread::spawn(move || {
            (0..200)
                .map(|i| c.spawn(async move { i }))
                .collect::<Vec<_>>()
        });
        for _ in 0..5 {
            ctx.poll(false);
        }
        ctx.shutdown_tasks();
        let handles = t.join().unwrap();
        let other = new_ctx();
        for h in handles {
            let _ = other.block_on(h);
        }
        drop(ctx);
    }
}

// ---------------------------------------------------------------------------------
// Panics in callbacks, then more polls.
// ---------------------------------------------------------------------------------

#[test]
fn probe_panics_in_every_callback_kind_then_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    // Timer callback panics once, then fires normally.
    let n = Arc::new(AtomicUsize::new(0));
    let n1 = Arc::clone(&n);
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        if n1.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("probe: timer callback panics");
        }
    });
    timer.modify(ClockType::Realtime.now_ns());
    let r = catch_unwind(AssertUnwindSafe(|| {
        while n.load(Ordering::SeqCst) == 0 {
            ctx.poll(true);
        }
    }));
    assert!(r.is_err() || n.load(Ordering::SeqCst) >= 1);
    timer.modify(ClockType::Realtime.now_ns());
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    while n.load(Ordering::SeqCst) < 2 {
        let _ = catch_unwind(AssertUnwindSafe(|| ctx.poll(true)));
    }
    assert!(
        !rescue.fired(),
        "a timer did not fire after its callback panicked once"
    );
    drop(rescue);

    // fd handler panics once; it still fires afterwards.
    let (r, w) = pipe();
    let rfd = r.as_raw_fd();
    let hits = Arc::new(AtomicUsize::new(0));
    let h1 = Arc::clone(&hits);
    ctx.set_fd_handler(
        rfd,
        Some(Box::new(move || {
            let mut b = [0u8; 16];
            // SAFETY: reading into a local buffer.
            unsafe { libc::read(rfd, b.as_mut_ptr().cast(), 16) };
            if h1.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("probe: fd handler panics");
            }
        })),
        None,
    )
    .unwrap();
    write_fd(w.as_raw_fd(), b"1");
    while hits.load(Ordering::SeqCst) == 0 {
        let _ = catch_unwind(AssertUnwindSafe(|| ctx.poll(true)));
    }
    write_fd(w.as_raw_fd(), b"2");
    let wfd = w.as_raw_fd();
    let rescue = Rescue::after(GRACE, move || write_fd(wfd, b"3"));
    while hits.load(Ordering::SeqCst) < 2 {
        let _ = catch_unwind(AssertUnwindSafe(|| ctx.poll(true)));
    }
    assert!(
        !rescue.fired(),
        "an fd handler stopped firing after it panicked once"
    );
    drop(rescue);
    ctx.set_fd_handler(rfd, None, None).unwrap();

    // A task panics; the next task still runs; block_on still works.
    let h = ctx.spawn(async { panic!("probe: task panics") });
    let r = catch_unwind(AssertUnwindSafe(|| ctx.block_on(h)));
    assert!(r.is_err() || r.is_ok_and(|r| r.is_err()));
    let v = ctx.block_on(ctx.spawn(async { 5 })).unwrap();
    assert_eq!(v, 5);

    // A BH panics inside a nested block_on inside a task.
    let c = Arc::clone(&ctx);
    let h = ctx.spawn(async move {
        c.schedule_oneshot(|| panic!("probe: BH panics"));
        let r = catch_unwind(AssertUnwindSafe(|| c.block_on(async { 1 })));
        let _ = r;
        let r = catch_unwind(AssertUnwindSafe(|| c.poll(false)));
        let _ = r;
        c.block_on(c.spawn(async { 9 })).unwrap()
    });
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    let r = catch_unwind(AssertUnwindSafe(|| ctx.block_on(h)));
    assert!(
        !rescue.fired(),
        "a nested poll hung after a BH panicked in a task"
    );
    if let Ok(Ok(v)) = r {
        assert_eq!(v, 9);
    }
    let v = ctx.block_on(ctx.spawn(async { 6 })).unwrap();
    assert_eq!(v, 6);
    drop((r, w));
}

/// Timers modified and deleted from other threads while the context drops; a Timer
/// outliving its context.
#[test]
fn probe_timers_around_context_drop() {
    for _ in 0..50 {
        let ctx = new_ctx();
        let fired = Arc::new(AtomicUsize::new(0));
        let f = Arc::clone(&fired);
        let timer = Arc::new(Mutex::new(Some(ctx.timer_new(
            ClockType::Realtime,
            move || {
                f.fetch_add(1, Ordering::SeqCst);
            },
        ))));
        let t2 = Arc::clone(&timer);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let th = thread::spawn(move || {
            let mut i = 0i64;
            while !s2.load(Ordering::SeqCst) {
                if let Some(t) = t2.lock().unwrap().as_ref() {
                    if i % 2 == 0 {
                        t.modify(ClockType::Realtime.now_ns() + (i % 3));
                    } else {
                        t.delete();
                    }
                }
                i += 1;
            }
        });
        for _ in 0..20 {
            ctx.poll(false);
        }
        drop(ctx);
        thread::sleep(Duration::from_millis(1));
        stop.store(true, Ordering::SeqCst);
        th.join().unwrap();
        // Operating on a timer of a dropped context must not panic.
        let t = timer.lock().unwrap().take().unwrap();
        t.modify(0);
        assert!(!t.pending() || t.pending());
        t.delete();
        drop(t);
    }
}

// ---------------------------------------------------------------------------------
// Graph read guards on an IoThread that is dropped while the writer waits.
// ---------------------------------------------------------------------------------

#[test]
fn probe_graph_reader_task_on_dropped_iothread_releases_writer() {
    use aioctx::graph::graph_lock;
    let main = aioctx::aio::main_context();
    main.make_current();
    let _dog = common::Watchdog::arm_secs(30);
    let iot = IoThread::new("probe-graph").unwrap();
    let held = Arc::new(AtomicBool::new(false));
    let h1 = Arc::clone(&held);
    let _h = iot.ctx().spawn(async move {
        let _g = graph_lock().rdlock().await;
        h1.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    });
    common::wait_until("reader holds", || held.load(Ordering::SeqCst));
    let dropper = thread::spawn(move || {
        // Whichever order this lands in, wrlock must return; most runs drop while the
        // writer waits (has_writer() is not raised until the readers are gone).
        thread::sleep(Duration::from_millis(100));
        drop(iot);
    });
    let w = graph_lock().wrlock();
    drop(w);
    dropper.join().unwrap();
    assert_eq!(graph_lock().readers(), 0);

    // Phase 2: a reader takes the lock on one IoThread, moves to another with
    // `reschedule_to` holding its guard, and that IoThread is dropped: its count must
    // come back wherever the guard is dropped.
    let a = IoThread::new("probe-graph-a").unwrap();
    let b = IoThread::new("probe-graph-b").unwrap();
    let bctx = Arc::clone(b.ctx());
    let moved = Arc::new(AtomicBool::new(false));
    let m1 = Arc::clone(&moved);
    a.ctx()
        .spawn(async move {
            let _g = graph_lock().rdlock().await;
            aioctx::aio::reschedule_to(&bctx).await;
            drop(bctx);
            m1.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        })
        .detach();
    common::wait_until("the reader moved", || moved.load(Ordering::SeqCst));
    assert_eq!(graph_lock().readers(), 1);
    drop(b);
    drop(a);
    assert_eq!(graph_lock().readers(), 0, "a moved reader's count leaked");
    let w = graph_lock().wrlock();
    drop(w);
}

/// A plain thread makes its own context current, a task of it holds a graph read lock,
/// and the thread exits: the last `Arc` of the context is the thread's CURRENT slot, so
/// the context drops (and cancels the task) in a thread-local destructor. The guard's
/// drop calls `with_current`, whose thread-local is being destroyed: it panics (the
/// drop logs it) and the read count leaks, so every later `wrlock` hangs.
#[test]
fn probe_graph_reader_on_a_thread_that_exits_with_its_context_current() {
    use aioctx::graph::graph_lock;
    let held = Arc::new(AtomicBool::new(false));
    let h1 = Arc::clone(&held);
    let t = thread::spawn(move || {
        let ctx = new_ctx();
        ctx.make_current();
        let h2 = Arc::clone(&h1);
        ctx.spawn(async move {
            let _g = graph_lock().rdlock().await;
            h2.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        })
        .detach();
        while !h1.load(Ordering::SeqCst) {
            ctx.poll(true);
        }
        // `ctx` drops here; the CURRENT slot keeps the context until the thread exits.
    });
    assert!(t.join().is_ok(), "the thread panicked while exiting");
    // Other tests' readers come and go; a leaked count stays.
    common::wait_until(
        "the read count of a context dropped at thread exit to come back (it leaked: \
         every later wrlock hangs)",
        || graph_lock().readers() == 0,
    );
}

/// IoThread dropped from inside a task of another IoThread / from a callback of its
/// own... here: dropped from a BH of a second IoThread while its task blocks on I/O.
#[test]
fn probe_iothread_dropped_with_read_in_flight_from_another_iothread() {
    let a = IoThread::new("probe-a").unwrap();
    let b = IoThread::new("probe-b").unwrap();
    let (r, w) = pipe();
    let rfd = r.as_raw_fd();
    let got = Arc::new(AtomicI32::new(i32::MIN));
    let g = Arc::clone(&got);
    let ctx = Arc::clone(a.ctx());
    a.ctx()
        .spawn(async move {
            let (res, _b) = ctx.read_at(rfd, vec![0u8; 8], 0).await;
            g.store(
                res.map(|n| n as i32)
                    .unwrap_or_else(|e| -e.raw_os_error().unwrap_or(0)),
                Ordering::SeqCst,
            );
        })
        .detach();
    thread::sleep(Duration::from_millis(5));
    let (tx, rx) = mpsc::channel();
    let slot = Arc::new(Mutex::new(Some(a)));
    let s2 = Arc::clone(&slot);
    b.ctx().schedule_oneshot(move || {
        drop(s2.lock().unwrap().take());
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("dropping an IoThread from another IoThread's BH hung");
    drop(b);
    drop((r, w));
}

// ---------------------------------------------------------------------------------
// Entry points nested in their own callbacks.
// ---------------------------------------------------------------------------------

/// An IoThread dropped from a callback running on its own thread: must work or panic
/// with a message that says why, never hang.
#[test]
fn probe_iothread_dropped_from_its_own_bh() {
    let _dog = common::Watchdog::arm_secs(30);
    let iot = IoThread::new("probe-self").unwrap();
    let ctx = Arc::clone(iot.ctx());
    let slot = Arc::new(Mutex::new(Some(iot)));
    let (tx, rx) = mpsc::channel();
    let s2 = Arc::clone(&slot);
    ctx.schedule_oneshot(move || {
        let it = s2.lock().unwrap().take();
        let r = catch_unwind(AssertUnwindSafe(move || drop(it)));
        let msg = match &r {
            Ok(()) => "ok".to_owned(),
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default(),
        };
        let _ = tx.send(msg);
    });
    let msg = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("dropping an IoThread from its own BH hung");
    println!("IoThread dropped from its own BH: {msg}");
    assert!(
        msg == "ok" || msg.contains("IoThread"),
        "dropping an IoThread from its own thread panicked with an unhelpful message: {msg:?}"
    );
}

/// A timer callback that drops its own `Timer`, one that deletes and re-arms itself,
/// and one that drops another timer due in the same pass.
#[test]
fn probe_timer_callbacks_drop_and_delete_timers() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let slot_a: Arc<Mutex<Option<aioctx::aio::Timer>>> = Arc::new(Mutex::new(None));
    let slot_b: Arc<Mutex<Option<aioctx::aio::Timer>>> = Arc::new(Mutex::new(None));
    let ran_b = Arc::new(AtomicUsize::new(0));
    let ran_a = Arc::new(AtomicUsize::new(0));
    let (sa, sb, ra) = (Arc::clone(&slot_a), Arc::clone(&slot_b), Arc::clone(&ran_a));
    let a = ctx.timer_new(ClockType::Realtime, move || {
        ra.fetch_add(1, Ordering::SeqCst);
        // Drop another timer due in the same pass, then ourselves.
        drop(sb.lock().unwrap().take());
        drop(sa.lock().unwrap().take());
    });
    let rb = Arc::clone(&ran_b);
    let b = ctx.timer_new(ClockType::Realtime, move || {
        rb.fetch_add(1, Ordering::SeqCst);
    });
    let now = ClockType::Realtime.now_ns();
    a.modify(now - 10);
    b.modify(now - 5);
    *slot_a.lock().unwrap() = Some(a);
    *slot_b.lock().unwrap() = Some(b);
    for _ in 0..3 {
        ctx.poll(false);
    }
    assert_eq!(ran_a.load(Ordering::SeqCst), 1);
    assert_eq!(
        ran_b.load(Ordering::SeqCst),
        0,
        "a timer dropped by an earlier callback of the same pass still ran"
    );
    // Self-delete then re-arm in the past, inside the callback.
    let slot_c: Arc<Mutex<Option<aioctx::aio::Timer>>> = Arc::new(Mutex::new(None));
    let ran_c = Arc::new(AtomicUsize::new(0));
    let (sc, rc) = (Arc::clone(&slot_c), Arc::clone(&ran_c));
    let c = ctx.timer_new(ClockType::Realtime, move || {
        let n = rc.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = sc.lock().unwrap().as_ref() {
            t.delete();
            if n < 3 {
                t.modify(0);
            }
        }
    });
    c.modify(0);
    *slot_c.lock().unwrap() = Some(c);
    for _ in 0..10 {
        ctx.poll(false);
    }
    assert_eq!(ran_c.load(Ordering::SeqCst), 4);
    drop(slot_c.lock().unwrap().take()); // breaks the test's own cycle
    drop(slot_a.lock().unwrap().take());
    drop(slot_b.lock().unwrap().take());
}

/// fd handler removed, the fd closed and its number reused by another pipe, a handler
/// set on the new one — all before the loop applied the first change.
#[test]
fn probe_fd_handler_on_a_reused_fd_number() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (ra, wa) = pipe();
    let num = ra.as_raw_fd();
    ctx.set_fd_handler(num, Some(Box::new(|| {})), None)
        .unwrap();
    ctx.poll(false);
    ctx.set_fd_handler(num, None, None).unwrap();
    let (rb, wb) = pipe();
    // Close the first pipe's read end and put the second one's at its number in one
    // step: dup2 never leaves `num` free, so no other test's thread can take it.
    // SAFETY: `num` is owned by `ra`, whose ownership ends here (forgotten below);
    // dup2 closes that file and installs rb's there.
    assert_eq!(unsafe { libc::dup2(rb.as_raw_fd(), num) }, num);
    std::mem::forget(ra);
    drop(rb);
    // SAFETY: `num` now refers to the second pipe's read end, owned here.
    let rb = unsafe { OwnedFd::from_raw_fd(num) };
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    ctx.set_fd_handler(
        num,
        Some(Box::new(move || {
            let mut b = [0u8; 16];
            // SAFETY: read into a local buffer.
            unsafe { libc::read(num, b.as_mut_ptr().cast(), 16) };
            h.fetch_add(1, Ordering::SeqCst);
        })),
        None,
    )
    .unwrap();
    write_fd(wb.as_raw_fd(), b"x");
    let wfd = wb.as_raw_fd();
    let rescue = Rescue::after(GRACE, move || write_fd(wfd, b"y"));
    while hits.load(Ordering::SeqCst) == 0 {
        ctx.poll(true);
    }
    assert!(
        !rescue.fired(),
        "the handler on the reused fd number never fired"
    );
    drop(rescue);
    ctx.set_fd_handler(num, None, None).unwrap();
    ctx.poll(false);
    drop((ctx, rb, wa, wb));
}

/// `wait_while` inside a task of an IoThread, waiting for another task of the same
/// context, and for a kick from another thread.
#[test]
fn probe_wait_while_inside_a_task() {
    let iot = IoThread::new("probe-wait").unwrap();
    let _dog = Watchdog::on_ctx(iot.ctx());
    let flag = Arc::new(AtomicBool::new(false));
    let other = Arc::new(AtomicBool::new(false));
    let (f, o) = (Arc::clone(&flag), Arc::clone(&other));
    let ctx = Arc::clone(iot.ctx());
    let (tx, rx) = mpsc::channel();
    iot.ctx()
        .spawn(async move {
            let o2 = Arc::clone(&o);
            ctx.spawn(async move { o2.store(true, Ordering::SeqCst) })
                .detach();
            aioctx::wait::wait_while(Some(&ctx), || !o.load(Ordering::SeqCst));
            aioctx::wait::wait_while(Some(&ctx), || !f.load(Ordering::SeqCst));
            tx.send(()).unwrap();
        })
        .detach();
    thread::sleep(Duration::from_millis(20));
    flag.store(true, Ordering::SeqCst);
    aioctx::wait::kick();
    rx.recv_timeout(Duration::from_secs(20))
        .expect("wait_while inside a task never returned");
}

/// Raw operations handed over from other threads while the context drops: each
/// callback runs once or is dropped once; none runs twice, none leaks.
#[test]
fn probe_remote_submit_raw_racing_drop() {
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    for _ in 0..20 {
        let Some(ctx) =
            common::uring_ctx("probe_remote_submit_raw_racing_drop", AioContext::builder())
        else {
            return;
        };
        let gone = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&ctx);
        let (g, r) = (Arc::clone(&gone), Arc::clone(&ran));
        let t = thread::spawn(move || {
            let mut n = 0;
            for _ in 0..500 {
                let guard = Guard(Arc::clone(&g));
                let r = Arc::clone(&r);
                // SAFETY: a NOP names no memory.
                let _ = unsafe {
                    c.submit_raw(
                        opcode::Nop::new().build(),
                        Box::new(move |_, _| {
                            let _keep = &guard;
                            r.fetch_add(1, Ordering::SeqCst);
                        }),
                    )
                };
                n += 1;
            }
            drop(c);
            n
        });
        for _ in 0..50 {
            ctx.poll(false);
        }
        drop(ctx);
        let n = t.join().unwrap();
        assert_eq!(
            gone.load(Ordering::SeqCst),
            n,
            "a callback leaked or was freed twice"
        );
        assert!(ran.load(Ordering::SeqCst) <= n);
    }
}

/// File reads whose futures are dropped mid-flight, then the context dropped: under
/// ASan this catches a buffer freed under the kernel or a worker.
#[test]
fn probe_file_reads_dropped_then_context_dropped() {
    let f = common::tempfile("dropread");
    std::io::Write::write_all(&mut &f.file, &vec![7u8; 1 << 16]).unwrap();
    for round in 0..30 {
        let ctx = new_ctx();
        let mut futs: Vec<_> = (0..32)
            .map(|i| Box::pin(ctx.read_at(f.file.as_raw_fd(), vec![0u8; 4096], (i * 2048) as u64)))
            .collect();
        for fu in &mut futs {
            let _ = poll_once(fu);
        }
        if round % 2 == 0 {
            ctx.poll(false);
        }
        futs.truncate(round % 7);
        drop(ctx);
        for mut fu in futs {
            if let Poll::Ready((Ok(n), b)) = poll_once(&mut fu) {
                assert!(b[..n].iter().all(|&x| x == 7));
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// I/O futures polled away from their context's home thread, or after its loop stopped.
// ---------------------------------------------------------------------------------

/// A `read_at` on an IoThread's context, awaited by `block_on` of another context on
/// another thread: pipe (stream path on epoll) and regular file (pool on epoll).
#[test]
fn probe_ring_op_awaited_off_its_home_thread() {
    let iot = IoThread::new("probe-offhome").unwrap();
    let _dog = Watchdog::on_ctx(iot.ctx());
    let (r, w) = pipe();
    let f = common::tempfile("offhome");
    std::io::Write::write_all(&mut &f.file, b"file-data").unwrap();
    let a = Arc::clone(iot.ctx());
    let rfd = r.as_raw_fd();
    let ffd = f.file.as_raw_fd();
    let t = thread::spawn(move || {
        let b = new_ctx();
        let (res, buf) = b.block_on(a.read_at(ffd, vec![0u8; 9], 0));
        assert_eq!(&buf[..res.unwrap()], b"file-data");
        b.block_on(a.read_at(rfd, vec![0u8; 8], 0))
    });
    thread::sleep(Duration::from_millis(20));
    write_fd(w.as_raw_fd(), b"pipe");
    let (res, buf) = t.join().unwrap();
    assert_eq!(&buf[..res.unwrap()], b"pipe");
    drop(iot);
}

/// A `read_at` created on an IoThread's context but first polled after the IoThread
/// was dropped (someone still holds the context): it must resolve (an error is fine),
/// not stay pending with no loop left to run it.
#[test]
fn probe_ring_op_on_a_stopped_iothread_context() {
    let iot = IoThread::new("probe-stopped").unwrap();
    let a = Arc::clone(iot.ctx());
    let f = common::tempfile("stopped");
    std::io::Write::write_all(&mut &f.file, b"abc").unwrap();
    let op = a.read_at(f.file.as_raw_fd(), vec![0u8; 3], 0);
    drop(iot);
    let b = new_ctx();
    let _dog = Watchdog::on_ctx(&b);
    let gave_up = Arc::new(AtomicBool::new(false));
    let waker: Arc<Mutex<Option<std::task::Waker>>> = Arc::new(Mutex::new(None));
    let (g, wk) = (Arc::clone(&gave_up), Arc::clone(&waker));
    let rescue = Rescue::after(GRACE, move || {
        g.store(true, Ordering::SeqCst);
        if let Some(w) = wk.lock().unwrap().take() {
            w.wake();
        }
    });
    let mut op = Some(op);
    let done = b.block_on(std::future::poll_fn(|cx| {
        *waker.lock().unwrap() = Some(cx.waker().clone());
        if Pin::new(op.as_mut().unwrap()).poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if gave_up.load(Ordering::SeqCst) {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }));
    drop(rescue);
    assert!(
        done,
        "a read_at first polled after its IoThread stopped was still pending after {GRACE:?}"
    );
    drop(op);
    drop(a);
}

/// IoThread creation failing (a ring size io_uring refuses) returns an error and
/// leaves no thread behind.
#[test]
fn probe_iothread_new_failure_is_an_error() {
    let r = IoThread::with_builder("probe-bad", AioContext::builder().ring_entries(0));
    assert!(r.is_err());
}

/// A task parked in `CoQueue::wait_unlocked` on a context that is dropped, with a
/// second waiter on another context: `wake_one` must reach the live waiter.
#[test]
fn probe_coqueue_waiter_cancelled_by_drop_passes_the_wake_on() {
    let q = Arc::new(aioctx::aio::CoQueue::new());
    let a = new_ctx();
    let b = new_ctx();
    let _dog = Watchdog::on_ctx(&b);
    let q1 = Arc::clone(&q);
    let _ha = a.spawn(async move { q1.wait_unlocked().await });
    a.poll(false);
    let q2 = Arc::clone(&q);
    let hb = b.spawn(async move {
        q2.wait_unlocked().await;
        7
    });
    b.poll(false);
    drop(a);
    assert!(q.wake_one(), "wake_one found no waiter");
    let c = Arc::clone(&b);
    let rescue = Rescue::after(GRACE, move || c.notify());
    let got = b.block_on(hb).unwrap();
    assert_eq!(got, 7);
    assert!(!rescue.fired());
}

/// A read future on a socket is dropped (abandoned) and the socket closed: the peer
/// must see the close (EOF). On io_uring the abandoned read stays in flight in the
/// kernel (which holds the file); on epoll the stream table keeps a `dup` of the socket
/// for it until something touches that descriptor number again. Either way the
/// connection stays open.
#[test]
fn probe_stream_abandoned_read_keeps_the_socket_open() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let mut sv = [0; 2];
    // SAFETY: `sv` is a valid array of two ints.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: socketpair returned two new descriptors that we own.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    {
        let mut read = ctx.read_at(a.as_raw_fd(), vec![0u8; 8], 0);
        assert!(poll_once(&mut read).is_pending());
        ctx.poll(false);
    }
    drop(a);
    for _ in 0..3 {
        ctx.poll(false);
    }
    let mut buf = [0u8; 8];
    // SAFETY: non-blocking receive into a local buffer.
    let n = unsafe {
        libc::recv(
            b.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            8,
            libc::MSG_DONTWAIT,
        )
    };
    let err = std::io::Error::last_os_error();
    assert_eq!(
        n, 0,
        "the peer of a closed socket did not see EOF ({err}): the socket is still open"
    );
    drop((ctx, b));
}

/// A read future on a pipe is dropped before any data came (a lost `select!` race),
/// then data arrives and a new read is issued: the new read must get the data. On
/// io_uring the dropped future's read is still armed in the kernel; it takes the data
/// and the loop frees it with the abandoned buffer. On epoll the abandoned op is
/// pruned before it runs, so the data reaches the new read.
#[test]
fn probe_dropped_read_future_loses_later_data() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    {
        let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0);
        assert!(poll_once(&mut read).is_pending());
        ctx.poll(false);
    }
    ctx.poll(false);
    write_fd(w.as_raw_fd(), b"hello");
    let wfd = w.as_raw_fd();
    let rescue = Rescue::after(GRACE, move || write_fd(wfd, b"RESCUE"));
    let (res, buf) = ctx.block_on(ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0));
    let n = res.unwrap();
    let fired = rescue.fired();
    drop(rescue);
    assert!(
        !fired && &buf[..n] == b"hello",
        "the read after a dropped read got {:?} (rescue needed: {fired}): the data written \
         after the drop was consumed by the abandoned operation and discarded",
        String::from_utf8_lossy(&buf[..n])
    );
    drop((ctx, r, w));
}

/// A timer callback re-arms its own timer and then runs a nested poll (e.g. a
/// `block_on` in the callback) while the new deadline passes. The nested poll cannot
/// run the callback (it is running), but the re-arm must not be lost: the timer fires
/// again after the callback returns.
#[test]
fn probe_timer_rearmed_in_its_callback_survives_a_nested_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let slot: Arc<Mutex<Option<aioctx::aio::Timer>>> = Arc::new(Mutex::new(None));
    let runs = Arc::new(AtomicUsize::new(0));
    let (s, r, c) = (Arc::clone(&slot), Arc::clone(&runs), Arc::clone(&ctx));
    let t = ctx.timer_new(ClockType::Realtime, move || {
        if r.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(t) = s.lock().unwrap().as_ref() {
                t.modify(ClockType::Realtime.now_ns() - 1);
            }
            // A nested poll while the re-armed deadline is past.
            c.poll(false);
            c.poll(false);
        }
    });
    t.modify(0);
    *slot.lock().unwrap() = Some(t);
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    while runs.load(Ordering::SeqCst) < 2 && !rescue.fired() {
        ctx.poll(true);
    }
    let pending = slot.lock().unwrap().as_ref().unwrap().pending();
    drop(slot.lock().unwrap().take()); // breaks the test's own cycle
    assert!(
        !rescue.fired(),
        "the timer re-armed in its callback never fired again (runs {}, pending {pending})",
        runs.load(Ordering::SeqCst)
    );
}

/// The same shape for a bottom half: it schedules itself again, then runs a nested
/// poll. The nested poll cannot run it (it is running), but the schedule must stand.
#[test]
fn probe_bh_rescheduled_in_its_callback_survives_a_nested_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let slot: Arc<Mutex<Option<aioctx::aio::Bh>>> = Arc::new(Mutex::new(None));
    let runs = Arc::new(AtomicUsize::new(0));
    let (s, r, c) = (Arc::clone(&slot), Arc::clone(&runs), Arc::clone(&ctx));
    let bh = ctx.bh_new(move || {
        if r.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(b) = s.lock().unwrap().as_ref() {
                b.schedule();
            }
            c.poll(false);
            c.poll(false);
        }
    });
    bh.schedule();
    *slot.lock().unwrap() = Some(bh);
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    while runs.load(Ordering::SeqCst) < 2 && !rescue.fired() {
        ctx.poll(true);
    }
    assert!(
        !rescue.fired(),
        "a BH rescheduled in its callback never ran again (runs {})",
        runs.load(Ordering::SeqCst)
    );
    drop(slot.lock().unwrap().take());
}

/// A task wakes itself, runs a nested poll (which must not poll it: it is running), and
/// returns Pending: the wake must stand and the task must be polled again.
#[test]
fn probe_task_self_wake_survives_a_nested_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let polls = Arc::new(AtomicUsize::new(0));
    let (p, c) = (Arc::clone(&polls), Arc::clone(&ctx));
    let h = ctx.spawn(std::future::poll_fn(move |cx| {
        if p.fetch_add(1, Ordering::SeqCst) == 0 {
            cx.waker().wake_by_ref();
            c.poll(false);
            let _ = c.block_on(async { 1 });
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }));
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    let mut h = Box::pin(h);
    while !h.is_finished() && !rescue.fired() {
        ctx.poll(true);
    }
    assert!(!rescue.fired(), "a self-woken task was never polled again");
    let _ = poll_once(&mut h);
}

/// The same shape for an fd handler: its fd stays readable while it runs a nested
/// poll; after it returns, the still-readable fd must dispatch it again.
#[test]
fn probe_fd_handler_nested_poll_keeps_it_armed() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let rfd = r.as_raw_fd();
    let runs = Arc::new(AtomicUsize::new(0));
    let (n, c) = (Arc::clone(&runs), Arc::clone(&ctx));
    ctx.set_fd_handler(
        rfd,
        Some(Box::new(move || {
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                for _ in 0..3 {
                    c.poll(false);
                }
            } else {
                let mut b = [0u8; 16];
                // SAFETY: read into a local buffer.
                unsafe { libc::read(rfd, b.as_mut_ptr().cast(), 16) };
            }
        })),
        None,
    )
    .unwrap();
    write_fd(w.as_raw_fd(), b"x");
    let c = Arc::clone(&ctx);
    let rescue = Rescue::after(GRACE, move || c.notify());
    while runs.load(Ordering::SeqCst) < 2 && !rescue.fired() {
        ctx.poll(true);
    }
    assert!(
        !rescue.fired(),
        "a readable fd's handler never ran again after a nested poll inside it (runs {})",
        runs.load(Ordering::SeqCst)
    );
    ctx.set_fd_handler(rfd, None, None).unwrap();
    ctx.poll(false);
    drop((ctx, r, w));
}

/// A `read_at` on a pipe whose read end the caller set O_NONBLOCK: both back ends must
/// give the same answer (the data once it comes, or `WouldBlock` at once).
#[test]
fn probe_read_at_on_a_nonblocking_pipe_same_on_both_backends() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    // SAFETY: setting a status flag on our own descriptor.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let wfd = w.as_raw_fd();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        write_fd(wfd, b"late");
    });
    let (res, buf) = ctx.block_on(ctx.read_at(r.as_raw_fd(), vec![0u8; 8], 0));
    t.join().unwrap();
    let what = match &res {
        Ok(n) => format!("data {:?}", String::from_utf8_lossy(&buf[..*n])),
        Err(e) => format!("error {e}"),
    };
    println!(
        "{}: read_at on an O_NONBLOCK pipe gave {what}",
        ctx.backend()
    );
    assert!(
        res.is_ok(),
        "{} backend: read_at on an O_NONBLOCK pipe gave {what}",
        ctx.backend()
    );
    drop((ctx, r, w));
}

/// `shutdown_tasks` from another thread while the task is inside its poll, having woken
/// itself: the task is cancelled when that poll returns Pending, and its handle
/// resolves.
#[test]
fn probe_shutdown_tasks_while_the_task_is_mid_poll_and_self_woken() {
    let iot = IoThread::new("probe-midpoll").unwrap();
    let _dog = Watchdog::on_ctx(iot.ctx());
    let inside = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let (i, g, p) = (Arc::clone(&inside), Arc::clone(&go), Arc::clone(&polls));
    let h = iot.ctx().spawn(std::future::poll_fn(move |cx| {
        if p.fetch_add(1, Ordering::SeqCst) == 0 {
            i.store(true, Ordering::SeqCst);
            while !g.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            cx.waker().wake_by_ref();
        }
        Poll::<u32>::Pending
    }));
    common::wait_until("the task is inside its poll", || {
        inside.load(Ordering::SeqCst)
    });
    let ctx = Arc::clone(iot.ctx());
    let t = thread::spawn(move || ctx.shutdown_tasks());
    thread::sleep(Duration::from_millis(10));
    go.store(true, Ordering::SeqCst);
    t.join().unwrap();
    let other = new_ctx();
    let r = other.block_on(h);
    assert!(r.is_err_and(|e| e.is_cancelled()));
    drop(iot);
}
