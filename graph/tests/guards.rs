//! Every graph guard against every other: a read reference into a `Graph` can never be
//! alive while a `WriteGuard` exists, also when the guards are taken by callbacks that
//! the writer's own poll runs. Where the types cannot say it, the lock panics before the
//! write lock is taken.
//!
//! The graph lock is process-wide and its writer is the main loop, so every test body
//! runs on this binary's one main-loop thread, one at a time (`on_main`), under a
//! watchdog. The tests assert the process-wide `readers()`, so no read lock of a test
//! lives outside its `on_main` body: each is dropped before the body returns.
#![cfg(not(loom))]

use std::cell::RefCell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use aioctx_aio::{IoThread, main_context};
use aioctx_graph::{Graph, MainLoopGuard, Quiesce, ReadGuard, WriteGuard, graph_lock};
use aioctx_testkit::{HANG_LIMIT as WATCHDOG, panic_message as message};

/// Runs `f` on the test kit's one main-loop thread and returns its result (or panic); a
/// body that does not finish within the kit's hang limit fails the test with its name.
fn on_main<R: Send + 'static>(_test: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
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

/// Runs `f`, which must panic; returns the message.
fn panics(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    message(&*err)
}

/// A read lock held by a task on `io`, released by `release`.
struct HeldReader(Arc<Mutex<Option<ReadGuard<'static>>>>);

impl HeldReader {
    fn take(io: &IoThread) -> Self {
        let slot = Arc::new(Mutex::new(None));
        let s = Arc::clone(&slot);
        let task = io.ctx().spawn(async move {
            *s.lock().unwrap() = Some(graph_lock().rdlock().await);
        });
        main_context().block_on(async move {
            let _ = task.await;
        });
        Self(slot)
    }

    /// Drops the guard on `io`'s thread.
    fn release(&self, io: &IoThread) {
        let s = Arc::clone(&self.0);
        io.ctx()
            .schedule_oneshot(move || drop(s.lock().unwrap().take()));
    }
}

thread_local! {
    /// Where a callback run by the writer's poll keeps the guards it took.
    static KEPT_WRITER: RefCell<Option<WriteGuard<'static>>> = const { RefCell::new(None) };
    static KEPT_READER: RefCell<Option<MainLoopGuard<'static>>> = const { RefCell::new(None) };
}

/// The lock is usable again: a write lock can be taken and dropped.
fn lock_is_usable() {
    drop(graph_lock().wrlock());
    assert_eq!(graph_lock().readers(), 0);
    assert!(!graph_lock().has_writer());
}

#[test]
fn regress_main_loop_read_guard_blocks_wrlock_before_any_mutation() {
    on_main("main_loop_read_guard_blocks_wrlock", || {
        let graph = Graph::new();
        let a = graph.add_node(&mut graph_lock().wrlock(), String::from("kept"));
        let r = graph_lock().rdlock_main_loop();
        let s = graph.get(&r, a).unwrap();
        let msg = panics(|| {
            let mut w = graph_lock().wrlock();
            drop(graph.remove_node(&mut w, a));
        });
        assert!(msg.contains("main-loop read guard"), "{msg}");
        assert_eq!(s, "kept", "the reference read under the guard is intact");
        let msg = panics(|| drop(graph_lock().wrlock_drained()));
        assert!(msg.contains("main-loop read guard"), "{msg}");
        drop(r);
        lock_is_usable();
    });
}

#[test]
fn rdlock_main_loop_under_the_write_lock_panics() {
    on_main("rdlock_main_loop_under_write", || {
        let w = graph_lock().wrlock();
        let msg = panics(|| drop(graph_lock().rdlock_main_loop()));
        assert!(msg.contains("write lock is held"), "{msg}");
        let msg = panics(|| drop(graph_lock().wrlock()));
        assert!(msg.contains("already held"), "{msg}");
        drop(w);
        lock_is_usable();
    });
}

/// A callback run by the writer's own poll takes a second write lock and keeps it: the
/// outer `wrlock` must panic instead of returning a second `WriteGuard`.
#[test]
fn regress_writer_poll_callback_cannot_keep_a_second_write_guard() {
    on_main("second_write_guard", || {
        let io = Arc::new(IoThread::new("io-second-writer").unwrap());
        let reader = HeldReader::take(&io);
        let io2 = Arc::clone(&io);
        let slot = Arc::clone(&reader.0);
        main_context().schedule_oneshot(move || {
            HeldReader(slot).release(&io2);
            let inner = graph_lock().wrlock();
            KEPT_WRITER.with(|k| *k.borrow_mut() = Some(inner));
        });
        let msg = panics(|| drop(graph_lock().wrlock()));
        assert!(msg.contains("already held"), "{msg}");
        assert!(msg.contains("callback run by its wait"), "{msg}");
        // The kept guard is the one writer; it still excludes readers.
        assert!(graph_lock().has_writer());
        graph_lock().assert_writable();
        KEPT_WRITER.with(|k| drop(k.borrow_mut().take()));
        lock_is_usable();
    });
}

/// A callback run by the writer's own poll takes a main-loop read guard and keeps it.
#[test]
fn regress_writer_poll_callback_cannot_keep_a_main_loop_read_guard() {
    on_main("kept_main_loop_guard", || {
        let io = Arc::new(IoThread::new("io-kept-reader").unwrap());
        let reader = HeldReader::take(&io);
        let io2 = Arc::clone(&io);
        let slot = Arc::clone(&reader.0);
        main_context().schedule_oneshot(move || {
            let r = graph_lock().rdlock_main_loop();
            KEPT_READER.with(|k| *k.borrow_mut() = Some(r));
            HeldReader(slot).release(&io2);
        });
        let msg = panics(|| drop(graph_lock().wrlock()));
        assert!(msg.contains("main-loop read guard"), "{msg}");
        assert!(!graph_lock().has_writer());
        KEPT_READER.with(|k| drop(k.borrow_mut().take()));
        lock_is_usable();
    });
}

/// Guards taken and dropped inside the writer's poll are fine.
#[test]
fn guards_dropped_inside_the_writer_poll_are_allowed() {
    on_main("guards_dropped_inside_poll", || {
        let io = Arc::new(IoThread::new("io-inside").unwrap());
        let reader = HeldReader::take(&io);
        let ran = Arc::new(AtomicBool::new(false));
        let (io2, slot, r2) = (Arc::clone(&io), Arc::clone(&reader.0), Arc::clone(&ran));
        main_context().schedule_oneshot(move || {
            drop(graph_lock().rdlock_main_loop());
            HeldReader(slot).release(&io2);
            drop(graph_lock().wrlock());
            r2.store(true, Ordering::Relaxed);
        });
        let w = graph_lock().wrlock();
        assert!(ran.load(Ordering::Relaxed));
        assert_eq!(graph_lock().readers(), 0);
        drop(w);
    });
}

/// A quiesce source whose `is_idle`, run by `wrlock_drained`'s wait, takes the write
/// lock and keeps it; and one whose `begin` keeps a main-loop read guard.
struct Sneaky {
    keep_writer: bool,
    done: AtomicUsize,
}

impl Quiesce for Sneaky {
    fn begin(&self) {
        if !self.keep_writer && self.done.fetch_add(1, Ordering::Relaxed) == 0 {
            let r = graph_lock().rdlock_main_loop();
            KEPT_READER.with(|k| *k.borrow_mut() = Some(r));
        }
    }
    fn end(&self) {}
    fn is_idle(&self) -> bool {
        if self.keep_writer && self.done.fetch_add(1, Ordering::Relaxed) == 0 {
            let w = graph_lock().wrlock();
            KEPT_WRITER.with(|k| *k.borrow_mut() = Some(w));
        }
        true
    }
}

#[test]
fn quiesce_callbacks_cannot_keep_guards_past_wrlock_drained() {
    on_main("quiesce_callbacks_keep_guards", || {
        for keep_writer in [true, false] {
            let source = Arc::new(Sneaky {
                keep_writer,
                done: AtomicUsize::new(0),
            });
            let reg = graph_lock().register_quiesce(source);
            let msg = panics(|| drop(graph_lock().wrlock_drained()));
            drop(reg);
            let want = if keep_writer {
                "already held"
            } else {
                "main-loop read guard"
            };
            assert!(msg.contains(want), "{msg}");
            KEPT_WRITER.with(|k| drop(k.borrow_mut().take()));
            KEPT_READER.with(|k| drop(k.borrow_mut().take()));
            lock_is_usable();
        }
    });
}

/// A read guard whose task's future is dropped on a thread that runs no context (its
/// context is gone) unlocks into the orphaned sum: no panic, no leaked count, and a
/// later `wrlock` does not hang (the watchdog turns a hang into a failure).
#[test]
fn regress_read_guard_dropped_without_context_unlocks() {
    on_main("read_guard_dropped_without_context", || {
        let io = IoThread::new("io-orphan").unwrap();
        let (tx, rx) = channel::<ReadGuard<'static>>();
        io.ctx()
            .spawn(async move {
                tx.send(graph_lock().rdlock().await).unwrap();
            })
            .detach();
        let guard = rx.recv_timeout(WATCHDOG).expect("the reader task ran");
        drop(io);
        assert_eq!(graph_lock().readers(), 1);
        let dropped = std::thread::spawn(move || catch_unwind(AssertUnwindSafe(|| drop(guard))))
            .join()
            .unwrap();
        if let Err(e) = dropped {
            panic!(
                "dropping a ReadGuard with no context panicked: {}",
                message(&*e)
            );
        }
        assert_eq!(graph_lock().readers(), 0, "the count leaked");
        lock_is_usable();
    });
}

/// Polls a fresh `rdlock()` once and drops it, locked or not.
fn try_rdlock_once() {
    let attempt = std::pin::pin!(graph_lock().rdlock());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if let std::task::Poll::Ready(guard) = attempt.poll(&mut cx) {
        drop(guard);
    }
}

/// `readers()` is the number of read locks held: exactly 0 while the write lock is held,
/// even while readers on two iothreads keep trying and backing off. (The loom model
/// `readers_is_zero_under_the_write_lock` checks the same exhaustively.)
#[test]
fn readers_is_zero_while_the_write_lock_is_held() {
    let seen = on_main("readers_zero_under_write", || {
        let ios = [
            IoThread::new("io-hammer-1").unwrap(),
            IoThread::new("io-hammer-2").unwrap(),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = ios
            .iter()
            .map(|io| {
                let stop = Arc::clone(&stop);
                io.ctx().spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        // One attempt, given up when it backs off: a reader backing off
                        // over and over while the writer holds the lock.
                        try_rdlock_once();
                        aioctx_aio::yield_now().await;
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        for i in 0..200 {
            let w = graph_lock().wrlock();
            for _ in 0..5000 {
                let n = graph_lock().readers();
                if n != 0 {
                    seen.push((i, n));
                }
            }
            drop(w);
        }
        stop.store(true, Ordering::Relaxed);
        // No reader of this test outlives it (the other tests read `readers()`).
        for task in tasks {
            main_context().block_on(async move {
                let _ = task.await;
            });
        }
        seen
    });
    assert!(
        seen.is_empty(),
        "readers() was non-zero under the write lock {} times; first (hold, value): {:?}",
        seen.len(),
        &seen[..seen.len().min(5)]
    );
}
