//! Regressions of the ring and the loop's sleep decision:
//! - a CQE can only reach the operation that submitted it: raw entries the loop cannot
//!   track (multishot through a `FnOnce` callback, `CQE_SKIP_SUCCESS`, zero-copy sends, links, cancels naming the
//!   loop's own operations) are refused at submit, and a user cancel cannot silence the
//!   loop's own eventfd read or fd-handler polls;
//! - a blocking `poll` never sleeps while something it already took from the kernel is
//!   queued (nested in a callback, or after a panicking callback), and the wake path is
//!   armed whenever it sleeps;
//! - an operation that completed reports its real result, also when its context is
//!   dropped before the completion was dispatched;
//! - a schedule racing a context's drop is either refused or freed by the drop.
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use aioctx::aio::io_uring::{opcode, squeue, types};
use aioctx::aio::{AioContext, EventNotifier};
use common::Watchdog;

fn refused(what: &str, ctx: &AioContext, entry: squeue::Entry) {
    let called = Arc::new(AtomicBool::new(false));
    let c = Arc::clone(&called);
    // SAFETY: the entries below name no memory, or memory that outlives the context
    // (statics); a refused entry never reaches the kernel.
    let res = unsafe {
        ctx.submit_raw(
            entry,
            Box::new(move |_, _| c.store(true, Ordering::Relaxed)),
        )
    };
    let err = res.expect_err(&format!("submit_raw accepted {what}"));
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{what}: {err}");
    assert!(!called.load(Ordering::Relaxed), "{what}: callback ran");
}

#[test]
fn regress_untrackable_raw_entries_are_refused_at_submit() {
    let Some(ctx) = common::uring_ctx(
        "regress_untrackable_raw_entries_are_refused_at_submit",
        AioContext::builder(),
    ) else {
        return;
    };
    let _dog = Watchdog::for_ctx("refused", &ctx);
    let e = EventNotifier::new().unwrap();
    let fd = types::Fd(e.fd());
    static BUF: [u8; 8] = [0; 8];
    refused(
        "a multishot POLL_ADD",
        &ctx,
        opcode::PollAdd::new(fd, libc::POLLIN as u32)
            .multi(true)
            .build(),
    );
    refused(
        "IOSQE_CQE_SKIP_SUCCESS",
        &ctx,
        opcode::Nop::new()
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS),
    );
    refused(
        "IOSQE_IO_LINK",
        &ctx,
        opcode::Nop::new().build().flags(squeue::Flags::IO_LINK),
    );
    refused(
        "IOSQE_BUFFER_SELECT",
        &ctx,
        opcode::Nop::new()
            .build()
            .flags(squeue::Flags::BUFFER_SELECT),
    );
    refused(
        "SEND_ZC (a second, notification CQE)",
        &ctx,
        opcode::SendZc::new(fd, BUF.as_ptr(), 8).build(),
    );
    refused(
        "a multishot ACCEPT",
        &ctx,
        opcode::AcceptMulti::new(fd).build(),
    );
    refused(
        "MSG_RING (posts a CQE with a user_data of its choice)",
        &ctx,
        opcode::MsgRingData::new(fd, 0, 0, None).build(),
    );
    refused(
        "PROVIDE_BUFFERS (hands memory to the kernel beyond its CQE)",
        &ctx,
        opcode::ProvideBuffers::new(BUF.as_ptr().cast_mut(), 8, 1, 0, 0).build(),
    );
    // Accepted: a plain NOP still works after all those refusals.
    let done = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&done);
    // SAFETY: a NOP names no memory.
    unsafe {
        ctx.submit_raw(
            opcode::Nop::new().build(),
            Box::new(move |res, _| {
                assert_eq!(res, 0);
                d.fetch_add(1, Ordering::Relaxed);
            }),
        )
    }
    .unwrap();
    while done.load(Ordering::Relaxed) == 0 {
        ctx.poll(true);
    }
}

/// Cancels by every route a user has (any, by fd, by guessed `user_data`) may hit the
/// loop's eventfd read and its fd-handler polls: both must survive.
#[test]
fn regress_user_cancel_cannot_silence_the_loop() {
    let Some(ctx) = common::uring_ctx(
        "regress_user_cancel_cannot_silence_the_loop",
        AioContext::builder(),
    ) else {
        return;
    };
    let _dog = Watchdog::for_ctx("user_cancel", &ctx);
    let e = Arc::new(EventNotifier::new().unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let (e2, r) = (Arc::clone(&e), Arc::clone(&runs));
    ctx.set_fd_handler(
        e.fd(),
        Some(Box::new(move || {
            e2.test_and_clear().unwrap();
            r.fetch_add(1, Ordering::Relaxed);
        })),
        None,
    )
    .unwrap();
    ctx.poll(false);
    let mut cancels: Vec<squeue::Entry> = (0..64u64)
        .map(|ud| opcode::AsyncCancel::new(ud).build())
        .collect();
    cancels.push(opcode::AsyncCancel2::new(types::CancelBuilder::any()).build());
    cancels
        .push(opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(e.fd())).all()).build());
    for round in 0..cancels.len() {
        let entry = cancels[round].clone();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        // SAFETY: a cancel names no memory.
        let res = unsafe {
            ctx.submit_raw(
                entry,
                Box::new(move |_, _| d.store(true, Ordering::Relaxed)),
            )
        };
        if let Err(err) = res {
            // A cancel that could name the loop's own operations may be refused.
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            continue;
        }
        while !done.load(Ordering::Relaxed) {
            ctx.poll(true);
        }
        // The fd handler still fires.
        let before = runs.load(Ordering::Relaxed);
        e.set().unwrap();
        while runs.load(Ordering::Relaxed) == before {
            ctx.poll(true);
        }
        // A cross-thread BH still wakes the sleeping loop (the eventfd read is armed).
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = Arc::clone(&ran);
        let bh = ctx.bh_new(move || r2.store(true, Ordering::Relaxed));
        let sleeps = ctx.stats().sleeps;
        thread::scope(|s| {
            s.spawn(|| {
                common::wait_asleep(&ctx, sleeps + 1);
                bh.schedule();
            });
            while !ran.load(Ordering::Relaxed) {
                ctx.poll(true);
            }
        });
        assert!(round < cancels.len());
    }
    ctx.set_fd_handler(e.fd(), None, None).unwrap();
}

/// Two eventfds with handlers, both ready in one batch.
struct Pair {
    a: Arc<EventNotifier>,
    b: Arc<EventNotifier>,
}

fn pair(
    ctx: &Arc<AioContext>,
    on_a: impl FnMut() + Send + 'static,
    b_ran: &Arc<AtomicUsize>,
) -> Pair {
    let a = Arc::new(EventNotifier::new().unwrap());
    let b = Arc::new(EventNotifier::new().unwrap());
    let mut on_a = on_a;
    let a2 = Arc::clone(&a);
    ctx.set_fd_handler(
        a.fd(),
        Some(Box::new(move || {
            if a2.test_and_clear().unwrap() {
                on_a();
            }
        })),
        None,
    )
    .unwrap();
    let (b2, r) = (Arc::clone(&b), Arc::clone(b_ran));
    ctx.set_fd_handler(
        b.fd(),
        Some(Box::new(move || {
            b2.test_and_clear().unwrap();
            r.fetch_add(1, Ordering::Relaxed);
        })),
        None,
    )
    .unwrap();
    ctx.poll(false);
    Pair { a, b }
}

/// The completion of the same batch queued behind a callback runs when that callback
/// nests a blocking `poll`; the nested poll does not sleep on it.
#[test]
fn regress_nested_blocking_poll_runs_the_queued_completion() {
    let ctx = common::new_ctx();
    let _dog = Watchdog::for_ctx("nested_poll_queued", &ctx);
    let b_ran = Arc::new(AtomicUsize::new(0));
    let c = Arc::downgrade(&ctx);
    let br = Arc::clone(&b_ran);
    let nested_done = Arc::new(AtomicBool::new(false));
    let nd = Arc::clone(&nested_done);
    let p = pair(
        &ctx,
        move || {
            let ctx = c.upgrade().unwrap();
            while br.load(Ordering::Relaxed) == 0 {
                ctx.poll(true);
            }
            nd.store(true, Ordering::Relaxed);
        },
        &b_ran,
    );
    for _ in 0..20 {
        b_ran.store(0, Ordering::Relaxed);
        nested_done.store(false, Ordering::Relaxed);
        // Both ready before the loop looks: one batch, `a` first.
        p.a.set().unwrap();
        p.b.set().unwrap();
        while !nested_done.load(Ordering::Relaxed) || b_ran.load(Ordering::Relaxed) == 0 {
            ctx.poll(true);
        }
    }
    ctx.set_fd_handler(p.a.fd(), None, None).unwrap();
    ctx.set_fd_handler(p.b.fd(), None, None).unwrap();
    ctx.poll(false);
}

/// After a callback panics, the completion queued behind it runs at the next blocking
/// `poll`, which must not sleep first.
#[test]
fn regress_completion_queued_behind_a_panic_runs_at_next_poll() {
    let ctx = common::new_ctx();
    let _dog = Watchdog::for_ctx("after_panic", &ctx);
    let b_ran = Arc::new(AtomicUsize::new(0));
    let p = pair(&ctx, || panic!("boom (expected by the test)"), &b_ran);
    for round in 1..=10 {
        p.a.set().unwrap();
        p.b.set().unwrap();
        // Both events in one batch, `a` first. Poll until `a` panicked; what was queued
        // behind it must then run without a wake-up.
        loop {
            match catch_unwind(AssertUnwindSafe(|| ctx.poll(true))) {
                Err(_) => break,
                Ok(_) => continue,
            }
        }
        while b_ran.load(Ordering::Relaxed) < round {
            ctx.poll(true);
        }
    }
    ctx.set_fd_handler(p.a.fd(), None, None).unwrap();
    ctx.set_fd_handler(p.b.fd(), None, None).unwrap();
    ctx.poll(false);
}

fn nop(ctx: &AioContext, cb: impl FnOnce(i32) + Send + 'static) {
    // SAFETY: a NOP names no memory.
    unsafe { ctx.submit_raw(opcode::Nop::new().build(), Box::new(move |res, _| cb(res))) }
        .expect("submit_raw on io_uring");
}

/// Raw completions of one batch: the first callback nests blocking polls until the
/// second ran; then the first panics and the second must run at the next poll.
#[test]
fn regress_raw_completion_queued_behind_a_nested_poll_or_a_panic_runs() {
    let Some(ctx) = common::uring_ctx(
        "regress_raw_completion_queued_behind_a_nested_poll_or_a_panic_runs",
        AioContext::builder(),
    ) else {
        return;
    };
    let _dog = Watchdog::for_ctx("raw_nested_or_panic", &ctx);
    ctx.poll(false);
    for round in 0..20 {
        let second = Arc::new(AtomicBool::new(false));
        let (c, s2) = (Arc::downgrade(&ctx), Arc::clone(&second));
        nop(&ctx, move |_| {
            if round % 2 == 1 {
                panic!("boom (expected by the test)");
            }
            let ctx = c.upgrade().unwrap();
            while !s2.load(Ordering::Relaxed) {
                ctx.poll(true);
            }
        });
        let s3 = Arc::clone(&second);
        nop(&ctx, move |_| s3.store(true, Ordering::Relaxed));
        while !second.load(Ordering::Relaxed) {
            let _ = catch_unwind(AssertUnwindSafe(|| ctx.poll(true)));
        }
    }
}

/// The loop's eventfd-read completion may arrive in the same batch as a user
/// completion whose callback nests a blocking `poll`: a BH scheduled from another
/// thread while that nested poll sleeps must still wake it.
#[test]
fn regress_cross_thread_bh_wakes_a_nested_poll() {
    let Some(ctx) = common::uring_ctx(
        "regress_cross_thread_bh_wakes_a_nested_poll",
        AioContext::builder(),
    ) else {
        return;
    };
    let _dog = Watchdog::for_ctx("nested_wake", &ctx);
    ctx.poll(false);
    for _ in 0..30 {
        let u = Arc::new(EventNotifier::new().unwrap());
        let buf = Arc::new(Mutex::new(Box::new([0u8; 8])));
        let ptr = buf.lock().unwrap().as_mut_ptr();
        let bh_ran = Arc::new(AtomicBool::new(false));
        let br = Arc::clone(&bh_ran);
        let bh = Arc::new(ctx.bh_new(move || br.store(true, Ordering::Relaxed)));
        let nested_done = Arc::new(AtomicBool::new(false));
        let c = Arc::downgrade(&ctx);
        let (keep, bh2, br2, nd) = (
            (Arc::clone(&u), Arc::clone(&buf)),
            Arc::clone(&bh),
            Arc::clone(&bh_ran),
            Arc::clone(&nested_done),
        );
        // SAFETY: `buf` and `u` are owned by the callback, which the context frees only
        // after the read's CQE.
        unsafe {
            ctx.submit_raw(
                opcode::Read::new(types::Fd(u.fd()), ptr, 8).build(),
                Box::new(move |res, _| {
                    let _keep = keep;
                    assert_eq!(res, 8);
                    let ctx = c.upgrade().unwrap();
                    let sleeps = ctx.stats().sleeps;
                    thread::scope(|s| {
                        s.spawn(|| {
                            common::wait_asleep(&ctx, sleeps + 1);
                            bh2.schedule();
                        });
                        while !br2.load(Ordering::Relaxed) {
                            ctx.poll(true);
                        }
                    });
                    nd.store(true, Ordering::Relaxed);
                }),
            )
        }
        .unwrap();
        let sleeps = ctx.stats().sleeps;
        thread::scope(|s| {
            s.spawn(|| {
                common::wait_asleep(&ctx, sleeps + 1);
                // The user read completes, then the loop's own eventfd read: two CQEs,
                // the loop's queued behind the user's.
                u.set().unwrap();
                ctx.notify();
            });
            while !nested_done.load(Ordering::Relaxed) {
                ctx.poll(true);
            }
        });
    }
}

fn pipe() -> (OwnedFd, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned here.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// A read that took data reports it, whatever happens to its context after: dropping
/// the context before the completion was dispatched must not turn it into ECANCELED
/// (the data would be gone from the pipe).
#[test]
fn regress_completed_read_keeps_its_result_when_the_context_drops() {
    let _dog = common::watchdog("completed_read_drop", 30);
    for _ in 0..20 {
        let ctx = common::new_ctx();
        ctx.poll(false); // bind the home thread: the read is pushed at its first poll
        let (r, mut w) = pipe();
        w.write_all(b"7 bytes").unwrap();
        let mut op = pin!(ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(op.as_mut().poll(&mut cx).is_pending());
        // Give the epoll pool's worker a chance to run the read; io_uring runs it at
        // the drop's submit.
        thread::sleep(Duration::from_millis(1));
        drop(ctx);
        let Poll::Ready((res, buf)) = op.as_mut().poll(&mut cx) else {
            panic!("the read did not resolve when its context dropped");
        };
        match res {
            Ok(n) => {
                assert_eq!(n, 7);
                assert_eq!(&buf[..7], b"7 bytes");
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
                // Cancelled: it must not have taken the data.
                drop(w);
                let mut rest = Vec::new();
                std::fs::File::from(r).read_to_end(&mut rest).unwrap();
                assert_eq!(rest, b"7 bytes", "a cancelled read consumed the data");
            }
        }
    }
}

/// Schedules racing the context's drop from another thread: each is refused, or its
/// BH is freed by the drop; none lands on a list nobody drains.
#[test]
fn regress_schedule_racing_drop_is_refused_or_freed() {
    const BHS: usize = 2000;
    let _dog = common::watchdog("schedule_vs_drop", 60);
    struct Token(Arc<AtomicUsize>);
    impl Drop for Token {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    for _ in 0..300 {
        let ctx = common::new_ctx();
        let freed: Vec<Arc<AtomicUsize>> =
            (0..BHS).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let bhs: Vec<_> = freed
            .iter()
            .map(|f| {
                let t = Token(Arc::clone(f));
                ctx.bh_new(move || {
                    let _ = &t;
                })
            })
            .collect();
        let started = AtomicBool::new(false);
        let accepted = thread::scope(|s| {
            let t = s.spawn(|| {
                bhs.iter()
                    .map(|bh| {
                        let ok = bh.try_schedule().is_ok();
                        started.store(true, Ordering::Relaxed);
                        ok
                    })
                    .collect::<Vec<_>>()
            });
            while !started.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            drop(ctx);
            t.join().unwrap()
        });
        for (i, ok) in accepted.iter().enumerate() {
            if *ok {
                assert_eq!(
                    freed[i].load(Ordering::Relaxed),
                    1,
                    "BH {i} was accepted by a dying context but not freed by its drop"
                );
            }
        }
        drop(bhs);
        for f in &freed {
            assert_eq!(f.load(Ordering::Relaxed), 1);
        }
    }
}
