//! The context's thread bindings: the thread-local current context, `make_current`, and
//! `IoThread` (which polls its context on a named thread and is stopped by a BH and
//! joined on drop).
//!
//! The main context has its own binary (`main_context.rs`): no test here touches it.
#![cfg(not(loom))]

mod common;

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use aioctx::aio::{AioContext, IoThread, current, try_current};
use common::{HANG_LIMIT, Watchdog, new_ctx, wait_asleep};

fn panic_message(err: Box<dyn std::any::Any + Send>) -> String {
    common::panic_message(&*err)
}

#[test]
fn make_current_binds_and_returns_the_previous_context() {
    let (a, b) = (new_ctx(), new_ctx());
    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    thread::spawn(move || {
        assert!(try_current().is_none());
        assert!(a2.make_current().is_none());
        assert!(a2.is_home_thread());
        assert!(Arc::ptr_eq(&current(), &a2));
        let prev = b2.make_current().expect("the previous context");
        assert!(Arc::ptr_eq(&prev, &a2));
        assert!(Arc::ptr_eq(&current(), &b2));
        // Both stay bound to this thread; polling either here works.
        assert!(!a2.poll(false));
        assert!(!b2.poll(false));
    })
    .join()
    .unwrap();

    // Bound elsewhere: making it current here is misuse.
    let msg = panic_message(
        catch_unwind(AssertUnwindSafe(|| a.make_current()))
            .expect_err("make_current on a foreign context did not panic"),
    );
    assert!(msg.contains("make_current"), "{msg}");
    assert!(!a.is_home_thread());
}

#[test]
fn iothread_runs_its_context_and_drop_joins_it() {
    thread_local! {
        static GUARD: Cell<Option<ExitFlag>> = const { Cell::new(None) };
    }
    /// Sets its flag when the thread that holds it exits.
    struct ExitFlag(Arc<AtomicBool>);
    impl Drop for ExitFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let iot = IoThread::new("iot-test").unwrap();
    assert_eq!(iot.name(), "iot-test");
    let ctx = Arc::clone(iot.ctx());
    let _dog = Watchdog::on_ctx(&ctx);
    let exited = Arc::new(AtomicBool::new(false));

    let (tx, rx) = mpsc::channel();
    let (ctx2, exited2) = (Arc::clone(&ctx), Arc::clone(&exited));
    ctx.schedule_oneshot(move || {
        GUARD.with(|g| g.set(Some(ExitFlag(exited2))));
        let name = thread::current().name().map(str::to_owned);
        tx.send((name, Arc::ptr_eq(&current(), &ctx2), ctx2.is_home_thread()))
            .unwrap();
    });
    let (name, is_current, is_home) = rx.recv_timeout(HANG_LIMIT).unwrap();
    assert_eq!(name.as_deref(), Some("iot-test"));
    assert!(is_current, "current() on an IoThread is not its context");
    assert!(is_home);
    assert!(!ctx.is_home_thread());

    // Many BHs from here all run there.
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..1000 {
        let r = Arc::clone(&runs);
        ctx.schedule_oneshot(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
    }
    common::wait_until("the IoThread to run 1000 BHs", || {
        runs.load(Ordering::Relaxed) == 1000
    });

    // Let it go to sleep, then drop it: the stop BH wakes it, and drop joins it. The
    // loop reads its sleep count from inside a BH; with nothing left to do, its next
    // poll sleeps.
    let (tx, rx) = mpsc::channel();
    let ctx3 = Arc::clone(&ctx);
    ctx.schedule_oneshot(move || tx.send(ctx3.stats().sleeps).unwrap());
    let sleeps = rx.recv_timeout(HANG_LIMIT).unwrap();
    wait_asleep(&ctx, sleeps + 1);
    assert!(!exited.load(Ordering::SeqCst));
    drop(iot);
    assert!(
        exited.load(Ordering::SeqCst),
        "IoThread::drop returned before its thread exited"
    );
}

#[test]
fn iothread_context_cannot_be_polled_elsewhere() {
    let iot = IoThread::new("iot-owner").unwrap();
    let ctx: Arc<AioContext> = Arc::clone(iot.ctx());
    // Make sure the IoThread has bound its context.
    let (tx, rx) = mpsc::channel();
    ctx.schedule_oneshot(move || tx.send(()).unwrap());
    rx.recv_timeout(HANG_LIMIT).unwrap();
    let msg = panic_message(
        catch_unwind(AssertUnwindSafe(|| ctx.poll(false))).expect_err("foreign poll did not panic"),
    );
    assert!(
        msg.contains("iot-owner"),
        "the message does not name the IoThread: {msg}"
    );
    drop(iot);
}
