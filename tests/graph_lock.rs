//! The graph lock end to end: the e3082ab3b3 regression under both unlock policies and
//! the graph-lock cases of QEMU's tests/unit/test-bdrv-drain.c, ported.
//!
//! The graph lock is process-wide and its writer must be the main loop, so every test
//! body runs on one "main loop" thread of this binary, one at a time (`on_main`).
#![cfg(not(loom))]

mod common;

use common::wait_until as watch_until;

use std::future::Future;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aioctx::aio::{IoThread, main_context};
use aioctx::graph::{Quiesce, ReadGuard, UnlockKick, graph_lock};
use aioctx::wait::{bh_oneshot, kick, num_waiters, wait_while};

/// Runs `f` on the test kit's one main-loop thread and returns its result (or panic);
/// the unlock policy goes back to `Always` after each body, also after a panic.
fn on_main<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    common::on_main(move || {
        /// Restores the default policy on return and on unwind.
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                graph_lock().set_unlock_kick(UnlockKick::Always);
            }
        }
        let _restore = Restore;
        f()
    })
}

/// A read lock taken by a task on `iothread` and held in a slot until released from
/// that iothread's context.
struct HeldReader {
    slot: Arc<Mutex<Option<ReadGuard<'static>>>>,
}

impl HeldReader {
    fn take(iothread: &IoThread) -> Self {
        let slot = Arc::new(Mutex::new(None));
        let s = Arc::clone(&slot);
        let task = iothread.ctx().spawn(async move {
            let guard = graph_lock().rdlock().await;
            *s.lock().unwrap() = Some(guard);
        });
        main_context().block_on(task).unwrap();
        assert_eq!(graph_lock().readers(), 1);
        Self { slot }
    }

    /// Drops the guard on `iothread`'s thread (its counter is written there only).
    fn release_from(&self, iothread: &IoThread) {
        let s = Arc::clone(&self.slot);
        iothread
            .ctx()
            .schedule_oneshot(move || drop(s.lock().unwrap().take()));
    }
}

/// What the rescuer thread saw while the writer was stuck.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    readers: u32,
    num_waiters: u32,
    asleep: bool,
    writer_returned: bool,
}

/// The seed commit's scenario: a reader on an iothread holds the lock, the main thread
/// enters `wrlock` and sleeps, then the reader unlocks. Returns what a watcher saw one
/// interval after the unlock, if the writer was still stuck then (and rescued it).
fn seed_scenario(policy: UnlockKick) -> Option<Seen> {
    on_main(move || {
        graph_lock().set_unlock_kick(policy);
        let iothread = Arc::new(IoThread::new("io-reader").unwrap());
        let reader = HeldReader::take(&iothread);
        let returned = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (iothread, returned) = (Arc::clone(&iothread), Arc::clone(&returned));
            let slot = Arc::clone(&reader.slot);
            std::thread::spawn(move || {
                watch_until("the writer to sleep in wrlock", || {
                    num_waiters() == 1 && main_context().is_sleeping()
                });
                HeldReader { slot }.release_from(&iothread);
                watch_until("the reader to unlock", || graph_lock().readers() == 0);
                // The watchdog interval: a woken writer returns well within it.
                let start = Instant::now();
                while !returned.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(1)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if returned.load(Ordering::Acquire) {
                    return None;
                }
                let seen = Seen {
                    readers: graph_lock().readers(),
                    num_waiters: num_waiters(),
                    asleep: main_context().is_sleeping(),
                    writer_returned: returned.load(Ordering::Acquire),
                };
                // Rescue: a bare notify makes the writer's poll return and re-check.
                main_context().notify();
                Some(seen)
            })
        };
        let w = graph_lock().wrlock();
        returned.store(true, Ordering::Release);
        assert_eq!(graph_lock().readers(), 0);
        drop(w);
        watcher.join().unwrap()
    })
}

#[test]
fn regress_e3082ab3b3_fixed_policy_writer_wakes() {
    assert!(
        seed_scenario(UnlockKick::Always).is_none(),
        "with UnlockKick::Always the writer must be woken by the reader's kick"
    );
}

#[test]
fn regress_e3082ab3b3_pre_fix_policy_hangs_until_rescued() {
    let seen = seed_scenario(UnlockKick::WhenWriterSeen)
        .expect("with UnlockKick::WhenWriterSeen the writer must stay asleep");
    // The exact state of the commit message: no reader, one waiter, asleep for good.
    assert_eq!(seen.readers, 0, "{seen:?}");
    assert_eq!(seen.num_waiters, 1, "{seen:?}");
    assert!(seen.asleep, "{seen:?}");
    assert!(!seen.writer_returned, "{seen:?}");
}

#[test]
fn reader_arriving_while_writer_holds_sleeps_until_wrunlock() {
    on_main(|| {
        let iothread = IoThread::new("io-late-reader").unwrap();
        let w = graph_lock().wrlock();
        let got = Arc::new(AtomicBool::new(false));
        let g = Arc::clone(&got);
        iothread
            .ctx()
            .spawn(async move {
                let guard = graph_lock().rdlock().await;
                drop(guard);
                g.store(true, Ordering::Release);
                kick();
            })
            .detach();
        // Let the iothread run the task until it queues itself behind the writer.
        for _ in 0..3 {
            bh_oneshot(iothread.ctx(), || ());
        }
        assert!(
            !got.load(Ordering::Acquire),
            "a reader got in while the writer held the lock"
        );
        assert_eq!(graph_lock().readers(), 0);
        drop(w);
        wait_while(None, || !got.load(Ordering::Acquire));
    });
}

#[test]
fn writer_poll_callback_takes_read_lock() {
    on_main(|| {
        let iothread = Arc::new(IoThread::new("io-hold").unwrap());
        let reader = HeldReader::take(&iothread);
        let took = Arc::new(AtomicBool::new(false));
        // A task on the main context: it runs inside the writer's own poll, while
        // has_writer is zero, and takes the read fast path.
        let t = Arc::clone(&took);
        let (slot, io) = (Arc::clone(&reader.slot), Arc::clone(&iothread));
        main_context()
            .spawn(async move {
                let guard = graph_lock().rdlock().await;
                t.store(true, Ordering::Release);
                drop(guard);
                HeldReader { slot }.release_from(&io);
            })
            .detach();
        let w = graph_lock().wrlock();
        assert!(took.load(Ordering::Acquire));
        assert_eq!(graph_lock().readers(), 0);
        drop(w);
    });
}

#[test]
fn lock_on_a_unlock_on_b_destroy_a_sum_stays_right() {
    on_main(|| {
        let a = IoThread::new("io-a").unwrap();
        let b = IoThread::new("io-b").unwrap();
        let b_ctx = Arc::clone(b.ctx());
        let task = a.ctx().spawn(async move {
            let guard = graph_lock().rdlock().await;
            aioctx::aio::reschedule_to(&b_ctx).await;
            drop(guard); // counted down on B
        });
        main_context().block_on(task).unwrap();
        assert_eq!(graph_lock().readers(), 0);
        drop(a); // A dies with its counter at +1: the orphaned count keeps the sum
        assert_eq!(graph_lock().readers(), 0);
        drop(graph_lock().wrlock());
        drop(b);
        assert_eq!(graph_lock().readers(), 0);
    });
}

/// A quiesce source that records its nesting depth.
#[derive(Default)]
struct Depth {
    now: AtomicU32,
    max: AtomicU32,
}

impl Quiesce for Depth {
    fn begin(&self) {
        let d = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(d, Ordering::Relaxed);
    }
    fn end(&self) {
        let before = self.now.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "Quiesce::end without begin");
    }
    fn is_idle(&self) -> bool {
        true
    }
}

#[test]
fn wrlock_drained_nested_in_bh_stays_balanced() {
    on_main(|| {
        let depth = Arc::new(Depth::default());
        let _reg = graph_lock().register_quiesce(depth.clone());
        let iothread = Arc::new(IoThread::new("io-nest").unwrap());
        let reader = HeldReader::take(&iothread);
        let nested = Arc::new(AtomicBool::new(false));
        let (n, slot, io) = (
            Arc::clone(&nested),
            Arc::clone(&reader.slot),
            Arc::clone(&iothread),
        );
        // Runs inside the outer writer's poll.
        main_context().schedule_oneshot(move || {
            HeldReader { slot }.release_from(&io);
            let inner = graph_lock().wrlock_drained();
            drop(inner);
            n.store(true, Ordering::Release);
        });
        let outer = graph_lock().wrlock_drained();
        assert!(nested.load(Ordering::Acquire));
        drop(outer);
        assert_eq!(depth.now.load(Ordering::Relaxed), 0, "begin/end unbalanced");
        // outer drained section, outer wrlock, inner drained section, inner wrlock.
        assert_eq!(depth.max.load(Ordering::Relaxed), 4);
    });
}

#[test]
fn wrlock_off_the_main_loop_panics_with_message() {
    on_main(|| ()); // make sure the main loop thread owns the main context
    let err = std::thread::spawn(|| drop(graph_lock().wrlock()))
        .join()
        .expect_err("wrlock off the main loop must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("only the main loop"), "{msg}");
}

#[test]
fn wrlock_inside_a_task_panics_with_message() {
    let msg = on_main(|| {
        let task = main_context().spawn(async {
            catch_unwind(|| drop(graph_lock().wrlock()))
                .err()
                .and_then(|e| e.downcast_ref::<String>().cloned())
        });
        main_context().block_on(task).unwrap()
    });
    assert!(msg.unwrap_or_default().contains("inside a task"));
}

#[test]
fn rdlock_on_a_thread_without_context_panics_with_message() {
    let err = std::thread::spawn(|| {
        let fut = graph_lock().rdlock();
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = fut.as_mut().poll(&mut cx);
    })
    .join()
    .expect_err("rdlock without a context must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("runs no AioContext"), "{msg}");
}

#[test]
fn assert_writable_only_under_the_write_lock() {
    on_main(|| {
        assert!(catch_unwind(|| graph_lock().assert_writable()).is_err());
        let w = graph_lock().wrlock();
        graph_lock().assert_writable();
        graph_lock().assert_readable();
        drop(w);
    });
}

#[test]
fn graph_container_edges_and_errors() {
    use aioctx::graph::{Graph, GraphError};
    on_main(|| {
        let graph = Graph::new();
        let mut w = graph_lock().wrlock();
        let (root, a, b) = (
            graph.add_node(&mut w, "root"),
            graph.add_node(&mut w, "a"),
            graph.add_node(&mut w, "b"),
        );
        graph.attach_child(&mut w, root, a).unwrap();
        graph.attach_child(&mut w, a, b).unwrap();
        assert_eq!(
            graph.attach_child(&mut w, b, root),
            Err(GraphError::Cycle {
                parent: b,
                child: root
            })
        );
        assert_eq!(
            graph.attach_child(&mut w, a, a),
            Err(GraphError::Cycle {
                parent: a,
                child: a
            })
        );
        // Replace keeps the position and moves the parent link.
        let c = graph.add_node(&mut w, "c");
        graph.attach_child(&mut w, root, c).unwrap();
        graph.replace_child(&mut w, root, a, b).unwrap();
        assert_eq!(graph.children(&w, root), Some(&[b, c][..]));
        assert_eq!(graph.parents(&w, a), Some(&[][..]));
        assert_eq!(graph.parents(&w, b), Some(&[a, root][..]));
        assert_eq!(
            graph.detach_child(&mut w, root, a),
            Err(GraphError::NoSuchEdge {
                parent: root,
                child: a
            })
        );
        graph.detach_child(&mut w, root, c).unwrap();
        assert_eq!(graph.parents(&w, c), Some(&[][..]));
        // Removing a node drops its edges; its id goes stale, also after slot reuse.
        assert_eq!(graph.remove_node(&mut w, b), Ok("b"));
        assert_eq!(graph.children(&w, root), Some(&[][..]));
        assert_eq!(graph.children(&w, a), Some(&[][..]));
        let d = graph.add_node(&mut w, "d");
        assert_ne!(d, b);
        assert_eq!(graph.get(&w, b), None);
        assert_eq!(
            graph.attach_child(&mut w, root, b),
            Err(GraphError::NoSuchNode(b))
        );
        assert_eq!(graph.node_ids(&w).len(), 4);
        drop(w);
        // Readers see the same graph through the main-loop guard.
        let r = graph_lock().rdlock_main_loop();
        assert_eq!(graph.get(&r, d), Some(&"d"));
    });
}

/// Every test of this binary again, in a child process per fence mode (the mode is
/// process-wide and chosen once, so a second mode needs a second process): the
/// regressions above must hold, and the pre-fix hang reproduce, with the asymmetric
/// fences as with the symmetric ones.
#[test]
fn every_case_again_in_both_fence_modes() {
    const CHILD: &str = "AIOCTX_GRAPH_LOCK_FENCES_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    aioctx_testkit::rerun_in_each_fence_mode(
        CHILD,
        &["--skip", "every_case_again_in_both_fence_modes"],
    );
}
