//! Regressions of what may outlive a context: callbacks that own their own handle or
//! their own context, handles used from another thread while the context drops, and an
//! `IoThread` stopped while its callbacks hold its context. Each test proves that an
//! object was freed through a `Weak` that no longer upgrades. Run on whichever back end
//! `AIOCTX_BACKEND` picks (run it with `AIOCTX_BACKEND=epoll` too).
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, Weak};

use aioctx::aio::{AioContext, Bh, ClockType, ContextGone, EventNotifier, IoThread, Timer};
use common::{Watchdog, new_ctx};

/// A far deadline: the timer stays armed for the whole test.
fn far() -> i64 {
    ClockType::Realtime.now_ns() + 3_600_000_000_000
}

/// A value whose only job is to be freed; the `Weak` says whether it was.
fn tracker() -> (Arc<()>, Weak<()>) {
    let t = Arc::new(());
    let w = Arc::downgrade(&t);
    (t, w)
}

/// A timer whose callback owns the timer itself (through a shared slot) and `t`.
fn self_owning_timer(ctx: &AioContext, t: Arc<()>) -> Arc<Mutex<Option<Timer>>> {
    let slot: Arc<Mutex<Option<Timer>>> = Arc::new(Mutex::new(None));
    let own = Arc::clone(&slot);
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        let _keep = (&own, &t);
    });
    *slot.lock().unwrap() = Some(timer);
    slot
}

#[test]
fn regress_armed_timer_owning_its_own_timer_is_freed_at_context_drop() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    let slot = self_owning_timer(&ctx, t);
    slot.lock().unwrap().as_ref().unwrap().modify(far());
    drop(slot);
    drop(ctx);
    assert!(
        freed.upgrade().is_none(),
        "an armed timer whose callback owns its own Timer outlived its context (a cycle \
         through the context's timer list)"
    );
}

#[test]
fn regress_disarmed_timer_owning_its_own_timer_is_freed_at_context_drop() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    drop(self_owning_timer(&ctx, t));
    drop(ctx);
    assert!(
        freed.upgrade().is_none(),
        "a disarmed timer whose callback owns its own Timer outlived its context"
    );
}

#[test]
fn regress_timer_modify_after_context_drop_is_refused_and_leaves_it_disarmed() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        let _keep = &t;
    });
    drop(ctx);
    // The callback can never run: it was freed with the context, the handle stays.
    assert!(
        freed.upgrade().is_none(),
        "the timer's callback outlived its context"
    );
    assert_eq!(timer.try_modify(far()), Err(ContextGone));
    timer.modify(far());
    timer.modify_anticipate(0);
    assert!(
        !timer.pending(),
        "a timer modified after its context dropped claims to be armed on a dead list"
    );
    assert_eq!(timer.expire_time(), None);
}

#[test]
fn regress_timer_modify_racing_context_drop_never_lands_on_a_dead_list() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    for round in 0..300 {
        let ctx = new_ctx();
        let (t, freed) = tracker();
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            let _keep = &t;
        });
        let go = Arc::new(Barrier::new(2));
        let g = Arc::clone(&go);
        let other = std::thread::spawn(move || {
            g.wait();
            let res = timer.try_modify(far());
            (timer, res)
        });
        go.wait();
        drop(ctx);
        let (timer, res) = other.join().unwrap();
        assert!(
            !timer.pending(),
            "round {round}: the timer is armed on a dropped context (modify: {res:?})"
        );
        assert!(
            freed.upgrade().is_none(),
            "round {round}: the callback of a timer modified while its context dropped \
             was not freed (modify: {res:?})"
        );
    }
}

#[test]
fn regress_self_owning_timer_modified_racing_drop_is_freed() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    for round in 0..300 {
        let ctx = new_ctx();
        let (t, freed) = tracker();
        let slot = self_owning_timer(&ctx, t);
        let go = Arc::new(Barrier::new(2));
        let g = Arc::clone(&go);
        let other = std::thread::spawn(move || {
            g.wait();
            slot.lock().unwrap().as_ref().unwrap().modify(far());
        });
        go.wait();
        drop(ctx);
        other.join().unwrap();
        assert!(
            freed.upgrade().is_none(),
            "round {round}: a self-owning timer modified while its context dropped leaked"
        );
    }
}

/// A BH whose callback owns the BH itself (through a shared slot) and `t`.
fn self_owning_bh(ctx: &AioContext, t: Arc<()>) -> Arc<Mutex<Option<Bh>>> {
    let slot: Arc<Mutex<Option<Bh>>> = Arc::new(Mutex::new(None));
    let own = Arc::clone(&slot);
    let bh = ctx.bh_new(move || {
        let _keep = (&own, &t);
    });
    *slot.lock().unwrap() = Some(bh);
    slot
}

#[test]
fn scheduled_bh_owning_its_own_bh_is_freed_at_context_drop() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    let slot = self_owning_bh(&ctx, t);
    slot.lock().unwrap().as_ref().unwrap().schedule();
    drop(slot);
    drop(ctx);
    assert!(freed.upgrade().is_none(), "a pending self-owning BH leaked");
}

#[test]
fn regress_bh_scheduled_racing_context_drop_frees_its_callback() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    for round in 0..300 {
        let ctx = new_ctx();
        let (t, freed) = tracker();
        let slot = self_owning_bh(&ctx, t);
        let go = Arc::new(Barrier::new(2));
        let g = Arc::clone(&go);
        let other = std::thread::spawn(move || {
            g.wait();
            let _ = slot.lock().unwrap().as_ref().unwrap().try_schedule();
        });
        go.wait();
        drop(ctx);
        other.join().unwrap();
        assert!(
            freed.upgrade().is_none(),
            "round {round}: a self-owning BH scheduled while its context dropped leaked"
        );
    }
}

#[test]
fn regress_unscheduled_bh_owning_its_own_bh_is_freed_at_context_drop() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    drop(self_owning_bh(&ctx, t));
    drop(ctx);
    assert!(
        freed.upgrade().is_none(),
        "an unscheduled BH whose callback owns its own Bh outlived its context"
    );
}

#[test]
fn oneshot_scheduled_before_drop_is_freed_unrun() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    let ran = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&ran);
    ctx.schedule_oneshot(move || {
        let _keep = &t;
        r.store(true, Ordering::Relaxed);
    });
    drop(ctx);
    assert!(
        freed.upgrade().is_none(),
        "a pending oneshot outlived its context"
    );
    assert!(!ran.load(Ordering::Relaxed));
}

#[test]
fn fd_handler_owning_its_event_notifier_is_freed_at_context_drop() {
    let ctx = new_ctx();
    let (t, freed) = tracker();
    let e = Arc::new(EventNotifier::new().unwrap());
    let fd = e.fd();
    let own = Arc::clone(&e);
    ctx.set_fd_handler(
        fd,
        Some(Box::new(move || {
            let _ = own.test_and_clear();
            let _keep = &t;
        })),
        None,
    )
    .unwrap();
    // Armed on the back end, and fired once.
    e.set().unwrap();
    while freed.upgrade().is_some() && ctx.poll(false) {}
    let notifier = Arc::downgrade(&e);
    drop(e);
    drop(ctx);
    assert!(
        freed.upgrade().is_none(),
        "an fd handler outlived its context"
    );
    assert!(
        notifier.upgrade().is_none(),
        "the EventNotifier owned by an fd handler outlived its context"
    );
}

/// Polls `ctx` from an `IoThread`'s loop until `done` holds.
fn run_on(thread: &IoThread, f: impl FnOnce(&Arc<AioContext>) + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ctx = Arc::clone(thread.ctx());
    thread.ctx().schedule_oneshot(move || {
        f(&ctx);
        tx.send(()).unwrap();
    });
    rx.recv().unwrap();
}

#[test]
fn regress_iothread_drop_frees_a_context_held_by_its_own_timer() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    let thread = IoThread::new("drop-timer").unwrap();
    let weak = Arc::downgrade(thread.ctx());
    run_on(&thread, |ctx| {
        // The timer owns its own handle and the context: a cycle only a stop breaks.
        let slot: Arc<Mutex<Option<Timer>>> = Arc::new(Mutex::new(None));
        let (own, c) = (Arc::clone(&slot), Arc::clone(ctx));
        let timer = ctx.timer_new(ClockType::Realtime, move || {
            let _keep = (&own, &c);
        });
        timer.modify(far());
        *slot.lock().unwrap() = Some(timer);
    });
    drop(thread);
    assert!(
        weak.upgrade().is_none(),
        "an IoThread's context outlived the IoThread: its armed timer owns it"
    );
}

#[test]
fn regress_iothread_drop_frees_a_context_held_by_its_own_fd_handler() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    let thread = IoThread::new("drop-fd").unwrap();
    let weak = Arc::downgrade(thread.ctx());
    let e = EventNotifier::new().unwrap();
    let fd = e.fd();
    let c = Arc::clone(thread.ctx());
    thread
        .ctx()
        .set_fd_handler(
            fd,
            Some(Box::new(move || {
                let _ = e.test_and_clear();
                let _keep = &c;
            })),
            None,
        )
        .unwrap();
    drop(thread);
    assert!(
        weak.upgrade().is_none(),
        "an IoThread's context outlived the IoThread: its fd handler owns it"
    );
}

#[test]
fn regress_iothread_drop_frees_a_context_held_by_its_own_bh() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    let thread = IoThread::new("drop-bh").unwrap();
    let weak = Arc::downgrade(thread.ctx());
    run_on(&thread, |ctx| {
        let slot: Arc<Mutex<Option<Bh>>> = Arc::new(Mutex::new(None));
        let (own, c) = (Arc::clone(&slot), Arc::clone(ctx));
        let bh = ctx.bh_new(move || {
            let _keep = (&own, &c);
        });
        *slot.lock().unwrap() = Some(bh);
    });
    drop(thread);
    assert!(
        weak.upgrade().is_none(),
        "an IoThread's context outlived the IoThread: its BH owns it"
    );
}

#[test]
fn regress_stopped_iothread_context_refuses_new_work() {
    let thread = IoThread::new("drop-refuse").unwrap();
    let ctx = Arc::clone(thread.ctx());
    drop(thread);
    // Nobody will ever poll it again: work handed to it is refused and freed at once.
    let (t, freed) = tracker();
    let bh = ctx.bh_new(move || {
        let _keep = &t;
    });
    assert_eq!(bh.try_schedule(), Err(ContextGone));
    assert!(freed.upgrade().is_none(), "a refused BH kept its callback");
    let (t, freed) = tracker();
    let timer = ctx.timer_new(ClockType::Realtime, move || {
        let _keep = &t;
    });
    assert_eq!(timer.try_modify(far()), Err(ContextGone));
    assert!(
        freed.upgrade().is_none(),
        "a refused timer kept its callback"
    );
    let (t, freed) = tracker();
    ctx.schedule_oneshot(move || {
        let _keep = &t;
    });
    assert!(
        freed.upgrade().is_none(),
        "a refused oneshot kept its callback"
    );
    let (t, freed) = tracker();
    let e = EventNotifier::new().unwrap();
    let refused = ctx.set_fd_handler(
        e.fd(),
        Some(Box::new(move || {
            let _keep = &t;
        })),
        None,
    );
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::BrokenPipe)
    );
    assert!(
        freed.upgrade().is_none(),
        "a refused fd handler kept its callback"
    );
    assert!(!ctx.has_fd_handler(e.fd()));
}

#[test]
fn regress_iothread_drop_frees_a_context_held_by_its_own_raw_operation() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    // Needs io_uring: check that this run may use it, then put it on an IoThread.
    if common::uring_ctx(
        "regress_iothread_drop_frees_a_context_held_by_its_own_raw_operation",
        AioContext::builder(),
    )
    .is_none()
    {
        return;
    }
    let builder = AioContext::builder().backend(aioctx::aio::Backend::IoUring);
    let thread = IoThread::with_builder("drop-raw", builder).unwrap();
    let weak = Arc::downgrade(thread.ctx());
    let (res_tx, res_rx) = std::sync::mpsc::channel();
    run_on(&thread, move |ctx| {
        // A poll on an eventfd nobody sets: in flight until cancelled.
        let e = EventNotifier::new().unwrap();
        let entry = aioctx::aio::io_uring::opcode::PollAdd::new(
            aioctx::aio::io_uring::types::Fd(e.fd()),
            libc::POLLIN as u32,
        )
        .build();
        let c = Arc::clone(ctx);
        // SAFETY: a POLL_ADD names no memory; the eventfd lives in the callback, so it
        // stays open until the operation completes.
        unsafe {
            ctx.submit_raw(
                entry,
                Box::new(move |res, _| {
                    let _keep = (&c, &e);
                    let _ = res_tx.send(res);
                }),
            )
        }
        .unwrap();
    });
    drop(thread);
    assert_eq!(
        res_rx.try_recv(),
        Ok(-libc::ECANCELED),
        "the in-flight operation was not cancelled when its IoThread stopped"
    );
    assert!(
        weak.upgrade().is_none(),
        "an IoThread's context outlived the IoThread: its in-flight raw operation owns it"
    );
}

#[test]
fn regress_iothread_dropped_on_its_own_thread_does_not_hang_or_panic() {
    let _w = Watchdog::arm(common::HANG_LIMIT);
    let thread = IoThread::new("drop-self").unwrap();
    let weak = Arc::downgrade(thread.ctx());
    let ctx = Arc::clone(thread.ctx());
    let (tx, rx) = std::sync::mpsc::channel();
    let slot = Arc::new(Mutex::new(Some(thread)));
    let s = Arc::clone(&slot);
    ctx.schedule_oneshot(move || {
        let thread = s.lock().unwrap().take();
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(thread)));
        tx.send(dropped.is_ok()).unwrap();
    });
    drop(ctx);
    assert_eq!(
        rx.recv(),
        Ok(true),
        "dropping an IoThread on its own thread panicked"
    );
    common::wait_until("the IoThread's context to be freed", || {
        weak.upgrade().is_none()
    });
}

/// Counts wakes.
struct CountWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn regress_sleep_armed_on_a_context_that_shut_down_rearms_on_the_current_one() {
    use std::future::Future;
    let _w = Watchdog::arm(common::HANG_LIMIT);
    let thread = IoThread::new("drop-sleep").unwrap();
    let woken = Arc::new(CountWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = std::task::Waker::from(Arc::clone(&woken));
    // First polled on the IoThread: the timer is armed on its context.
    let (tx, rx) = std::sync::mpsc::channel();
    let w = waker.clone();
    run_on(&thread, move |_| {
        let mut sleep = Box::pin(aioctx::aio::sleep(std::time::Duration::from_millis(300)));
        let pending = sleep
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&w))
            .is_pending();
        tx.send((sleep, pending)).unwrap();
    });
    let (sleep, pending) = rx.recv().unwrap();
    assert!(pending);
    drop(thread);
    assert_eq!(
        woken.0.load(Ordering::Relaxed),
        1,
        "the sleep's context shut down and its task was not woken to re-arm"
    );
    // Awaited on another context, it completes there instead of waiting on a dead one.
    let ctx = new_ctx();
    ctx.make_current();
    ctx.block_on(sleep);
    drop(waker);
}

#[test]
fn regress_read_waiting_on_a_context_that_shut_down_completes_cancelled() {
    use std::future::Future;
    let _w = Watchdog::arm(common::HANG_LIMIT);
    let thread = IoThread::new("drop-read").unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 returned two fresh descriptors, owned here.
    let (r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    use std::os::fd::AsRawFd;
    // A read of an empty pipe, submitted to the IoThread's context from here.
    let mut op = thread.ctx().read_at(r.as_raw_fd(), vec![0u8; 16], 0);
    let woken = Arc::new(CountWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = std::task::Waker::from(Arc::clone(&woken));
    let first = std::pin::Pin::new(&mut op).poll(&mut std::task::Context::from_waker(&waker));
    assert!(first.is_pending());
    // A round trip through the loop: the hand-over (ring or stream table) has been taken.
    run_on(&thread, |_| {});
    // Somebody still holds the context, so only the IoThread's stop can end the read.
    let keep = Arc::clone(thread.ctx());
    drop(thread);
    // The context is shut down: the read completes, cancelled, instead of waiting on a
    // loop that nobody polls.
    let ctx = new_ctx();
    ctx.make_current();
    let (res, _buf) = ctx.block_on(op);
    assert_eq!(
        res.map_err(|e| e.raw_os_error()),
        Err(Some(libc::ECANCELED)),
        "a read waiting on a context that shut down"
    );
    drop((w, keep));
}

#[test]
fn regress_read_first_polled_after_its_context_shut_down_completes_cancelled() {
    use std::future::Future;
    use std::os::fd::AsRawFd;
    let _w = Watchdog::arm(common::HANG_LIMIT);
    let thread = IoThread::new("drop-late-read").unwrap();
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    // Made while the loop runs, first polled (and so submitted) after it stopped, while
    // somebody still holds the context.
    let op = thread.ctx().read_at(r.as_raw_fd(), vec![0u8; 16], 0);
    let keep = Arc::clone(thread.ctx());
    drop(thread);
    let ctx = new_ctx();
    ctx.make_current();
    let mut op = std::pin::pin!(op);
    let woken = Arc::new(CountWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = std::task::Waker::from(woken);
    let mut cx = std::task::Context::from_waker(&waker);
    // Polled twice at most: submitting to the stopped context completes it at once.
    let mut res = None;
    for _ in 0..2 {
        if let std::task::Poll::Ready((r, _)) = op.as_mut().poll(&mut cx) {
            res = Some(r);
            break;
        }
    }
    let res = res.expect("a read submitted to a context whose IoThread stopped stays pending");
    assert_eq!(
        res.map_err(|e| e.raw_os_error()),
        Err(Some(libc::ECANCELED))
    );
    drop((w, keep));
}
