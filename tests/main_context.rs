//! The process-wide main context: created once, current on its home thread only, and
//! with busy polling off by default. Alone in its binary, because the main context is
//! process-wide: its home thread is this test's thread, and no other test polls it or
//! moves its counters.
#![cfg(not(loom))]

mod common;

use std::panic::catch_unwind;
use std::sync::Arc;
use std::thread;

use aioctx::aio::{current, main_context, try_current};
use common::{Watchdog, wait_asleep};

fn panic_message(err: Box<dyn std::any::Any + Send>) -> String {
    common::panic_message(&*err)
}

#[test]
fn main_context_is_current_on_its_home_thread_only() {
    let main = main_context();
    assert!(Arc::ptr_eq(main, main_context()), "two main contexts");
    assert_eq!(main.name(), "main");
    let _dog = Watchdog::on_ctx(main);

    // This thread becomes its home by polling it.
    main.poll(false);
    assert!(main.is_home_thread());
    assert!(Arc::ptr_eq(&current(), main));
    assert!(Arc::ptr_eq(&try_current().unwrap(), main));

    // Another thread has no current context until it makes one current.
    thread::Builder::new()
        .name("no-context".into())
        .spawn(|| {
            assert!(try_current().is_none());
            assert!(!main_context().is_home_thread());
            let msg = panic_message(catch_unwind(current).expect_err("current() did not panic"));
            assert!(
                msg.contains("no-context"),
                "the message does not name the thread: {msg}"
            );
        })
        .unwrap()
        .join()
        .unwrap();

    // Busy polling is off by default on the main context: waits never grow it. Sleeps
    // are counted from here (only this thread, its home, polls it).
    let sleeps = main.stats().sleeps;
    let main2 = Arc::clone(main);
    let kicker = thread::spawn(move || {
        for n in 1..=3 {
            wait_asleep(&main2, sleeps + n);
            main2.notify();
        }
    });
    for _ in 0..3 {
        main.poll(true);
        assert_eq!(main.poll_ns(), 0);
    }
    kicker.join().unwrap();
    assert_eq!(main.stats().sleeps - sleeps, 3);
}
