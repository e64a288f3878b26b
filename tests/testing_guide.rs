//! The pattern of `aioctx_aio::testing`, exercised: several tests of one binary that
//! each need the main context (`wait_while(None)`, `bh_oneshot`, the graph writer, a
//! main-context poll) run their bodies through the test kit's `on_main`, on the
//! binary's one main-loop thread, in any order and in parallel test threads.
#![cfg(not(loom))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aioctx::aio::{IoThread, main_context};
use aioctx::graph::graph_lock;
use aioctx::wait::{bh_oneshot, kick, num_waiters, wait_while};
use common::{on_main, test_name};

#[test]
fn wait_while_none_on_the_main_loop() {
    on_main(|| {
        let io = IoThread::new("guide-wait").unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        io.ctx().schedule_oneshot(move || {
            // Release: pairs with the Acquire load in the waiter's condition.
            d.store(true, Ordering::Release);
            kick();
        });
        // Acquire: pairs with the Release store above.
        wait_while(None, || !done.load(Ordering::Acquire));
        drop(io); // joined: no kick of this body outlives it
        assert_eq!(num_waiters(), 0);
    });
}

#[test]
fn bh_oneshot_from_the_main_loop() {
    on_main(|| {
        let io = IoThread::new("guide-oneshot").unwrap();
        assert_eq!(bh_oneshot(io.ctx(), || 6 * 7), 42);
        // On the main context itself: runs in the wait's own poll, on this thread.
        let name = bh_oneshot(main_context(), || {
            std::thread::current().name().map(str::to_owned)
        });
        assert_eq!(name.as_deref(), Some("main-loop"));
    });
}

#[test]
fn graph_writer_on_the_main_loop() {
    on_main(|| {
        let io = IoThread::new("guide-graph").unwrap();
        let reader = io.ctx().spawn(async {
            let _guard = graph_lock().rdlock().await;
        });
        main_context().block_on(reader).unwrap();
        let w = graph_lock().wrlock();
        assert_eq!(graph_lock().readers(), 0);
        drop(w);
    });
}

#[test]
fn the_body_knows_its_test() {
    let me = test_name();
    let (home, inside) = on_main(|| (main_context().is_home_thread(), test_name()));
    assert!(home, "the body runs on the main context's home thread");
    assert_eq!(inside, me);
}

#[test]
fn polling_the_main_context_off_the_main_loop_panics() {
    on_main(|| ()); // the main-loop thread owns the main context from now on
    let direct = std::panic::catch_unwind(|| main_context().poll(false));
    assert!(direct.is_err(), "a test thread polled the main context");
}
