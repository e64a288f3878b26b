#![cfg(not(loom))]
//! What a panicking wait leaves behind: nothing. These checks read the process-wide
//! `num_waiters()`, so they live in a binary of their own, in one test, where no other
//! waiter exists.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use aioctx_aio::IoThread;
use aioctx_testkit::panic_message as message;
use aioctx_wait::{num_waiters, wait_while};

/// The one test of this binary (see the module docs).
#[test]
fn panicking_waits_leave_no_waiter_registered() {
    // A condition that panics: the panic propagates, the count goes back to 0.
    let err = std::thread::spawn(|| {
        panic::catch_unwind(|| wait_while(None, || panic!("cond failed")))
            .expect_err("the condition's panic propagates")
    })
    .join()
    .unwrap();
    assert_eq!(message(&*err), "cond failed");
    assert_eq!(num_waiters(), 0, "a panicking condition left a waiter");

    // Waiting between iothreads: refused with the reason, and nothing left registered.
    let io1 = IoThread::new("io-one").unwrap();
    let io2 = IoThread::new("io-two").unwrap();
    let ctx2 = io2.ctx().clone();
    let (tx, rx) = mpsc::channel();
    io1.ctx().schedule_oneshot(move || {
        let other = panic::catch_unwind(AssertUnwindSafe(|| wait_while(Some(&ctx2), || true)))
            .expect_err("waiting on another iothread's context must panic");
        let none = panic::catch_unwind(|| wait_while(None, || true))
            .expect_err("waiting on the main loop from an iothread must panic");
        let _ = tx.send((message(&*other), message(&*none), num_waiters()));
    });
    let (other, none, waiters) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watchdog: the iothread did not answer within 20 s");
    assert_eq!(waiters, 0, "the registration is dropped on the panic");
    for msg in [&other, &none] {
        assert!(msg.contains("iothread `io-one`"), "{msg}");
        assert!(msg.contains("deadlock"), "{msg}");
    }
    assert!(other.contains("context `io-two`"), "{other}");
    assert!(none.contains("main loop"), "{none}");
}
