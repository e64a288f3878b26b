//! Review probes: read guards that leave the thread of their counter. A guard taken on
//! an iothread and dropped on another iothread after the first one exited, or dropped
//! on a thread that runs no context while the writer waits, must leave the sum at zero
//! and wake the writer. Every body runs on the test kit's main-loop thread (`on_main`),
//! one at a time, under its watchdog.
#![cfg(not(loom))]

use std::sync::{Arc, Mutex};

use aioctx_aio::{IoThread, main_context};
use aioctx_graph::{ReadGuard, graph_lock};

fn on_main<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    aioctx_testkit::on_main_with(
        || {
            format!(
                "readers() = {}, has_writer() = {}",
                graph_lock().readers(),
                graph_lock().has_writer()
            )
        },
        f,
    )
}

/// A read guard taken by a task on `io`, handed out.
fn take_on(io: &IoThread) -> ReadGuard<'static> {
    let slot = Arc::new(Mutex::new(None));
    let s = Arc::clone(&slot);
    let task = io.ctx().spawn(async move {
        *s.lock().unwrap() = Some(graph_lock().rdlock().await);
    });
    main_context().block_on(async move {
        let _ = task.await;
    });
    let taken = slot.lock().unwrap().take();
    taken.expect("the task took the read lock")
}

#[test]
fn guard_dropped_on_another_iothread_after_its_own_exited() {
    on_main(|| {
        let a = IoThread::new("probe-a").unwrap();
        let guard = take_on(&a);
        drop(a); // the thread exits holding the count: it moves to the orphaned sum
        assert_eq!(graph_lock().readers(), 1);
        let b = IoThread::new("probe-b").unwrap();
        let slot = Arc::new(Mutex::new(Some(guard)));
        let s = Arc::clone(&slot);
        let task = b.ctx().spawn(async move {
            drop(s.lock().unwrap().take());
        });
        main_context().block_on(async move {
            let _ = task.await;
        });
        assert_eq!(graph_lock().readers(), 0);
        drop(graph_lock().wrlock());
        drop(b); // b's counter (wrapped below zero) goes to the orphaned sum
        assert_eq!(graph_lock().readers(), 0);
        drop(graph_lock().wrlock());
    });
}

/// The writer waits; a thread that runs no context drops the last read guard: its
/// kick must wake the writer's wait.
#[test]
fn guard_dropped_on_a_plain_thread_wakes_a_waiting_writer() {
    on_main(|| {
        let io = IoThread::new("probe-c").unwrap();
        for _ in 0..20 {
            let guard = take_on(&io);
            let dropper = std::thread::spawn(move || {
                // Best effort: drop while the writer sleeps in its wait (bounded, so
                // a main loop that never sleeps cannot hang the probe).
                let main = main_context();
                for _ in 0..100_000 {
                    if main.is_sleeping() {
                        break;
                    }
                    std::thread::yield_now();
                }
                drop(guard);
            });
            drop(graph_lock().wrlock());
            dropper.join().unwrap();
            assert_eq!(graph_lock().readers(), 0);
        }
    });
}
