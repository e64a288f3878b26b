//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same
//! check function the fuzz targets call, then runs proptests over the same `run(ops)`:
//! CI covers the fuzz targets without libFuzzer.
#![cfg(not(loom))]

use aioctx_fuzzcheck::{bh, decode_each, graph, timers};
use proptest::prelude::*;

fn replay(target: &str, run: fn(&[u8])) {
    for (f, data) in aioctx_fuzzcheck::corpus(target) {
        eprintln!("replay {}", f.display());
        run(&data);
    }
}

#[test]
fn corpus_bh_schedule_replays() {
    replay("bh_schedule", bh::run_bytes);
}

#[test]
fn corpus_timers_replays() {
    replay("timers", timers::run_bytes);
}

#[test]
fn corpus_graph_lock_replays() {
    replay("graph_lock", graph::run_bytes);
}

fn ops() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..24), 0..48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_bh_schedule(chunks in ops()) {
        bh::run(&decode_each(&chunks));
    }

    #[test]
    fn proptest_timers(chunks in ops()) {
        timers::run(&decode_each(&chunks));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn proptest_graph_lock(chunks in ops()) {
        graph::run(&decode_each(&chunks));
    }
}

#[test]
fn regress_fuzz_bh_rescheduled_then_nested_poll_is_not_lost() {
    use bh::{Action, Op};
    bh::run(&[
        Op::New(vec![Action::Schedule(0), Action::NestedPoll]),
        Op::Schedule(0),
        Op::Poll,
        Op::Poll,
    ]);
}

/// A BH reschedules itself, reaches itself in a nested poll (deferred by [BH7]), then
/// panics: the deferred schedule must survive the unwind and run at the next poll.
#[test]
fn regress_fuzz_bh_deferred_schedule_survives_a_panic() {
    use bh::{Action, Op};
    bh::run(&[
        Op::New(vec![Action::Schedule(0), Action::NestedPoll, Action::Panic]),
        Op::Schedule(0),
        Op::Poll,
        Op::Poll,
        Op::Poll,
    ]);
}

/// A panic three polls deep leaves the rest of every slice for the next poll, and the
/// callbacks it unwound through run again when scheduled.
#[test]
fn regress_fuzz_bh_panic_in_nested_poll_keeps_the_slices() {
    use bh::{Action, Op};
    bh::run(&[
        Op::New(vec![Action::Schedule(1), Action::NestedPoll]),
        Op::New(vec![Action::Schedule(2), Action::NestedPoll]),
        Op::New(vec![Action::Panic]),
        Op::New(vec![]),
        Op::Schedule(0),
        Op::Schedule(3),
        Op::Poll,
        Op::Poll,
        Op::Schedule(0),
        Op::Poll,
        Op::Poll,
    ]);
}

/// A hand-written graph-lock sequence: readers on two contexts, nested read locks, the
/// writer racing their unlocks, readers blocked behind the writer, then moved to other
/// contexts with their locks held (the per-context counts wrap; only the sum counts).
#[test]
fn graph_lock_writer_races_unlocks_then_readers_move_with_locks_held() {
    use graph::Op::*;
    for _ in 0..20 {
        graph::run(&[
            Spawn(1),
            Spawn(0),
            RdLock(0),
            RdLock(1),
            RdLock(1),
            WrLock,
            RdLock(0),
            RdLock(1),
            WrUnlock,
            Move(0, 2),
            Move(1, 1),
            RdUnlock(0),
            WrLock,
            WrUnlock,
            Exit(0),
        ]);
    }
}

/// A hand-written graph-lock sequence for a context that dies: its iothread dropped
/// inside the writer's `wrlock` wait while its tasks hold read locks (the writer goes on
/// only once the cancellation released them), dropped between steps while its tasks
/// are blocked in `rdlock` behind the writer or parked (the other blocked readers still
/// acquire at the unlock), then a task moved to the dropped context with a lock held,
/// and one spawned on it: every such task ends cancelled; a new iothread takes over.
#[test]
fn graph_lock_context_dropped_with_held_guards_and_blocked_readers_cancels_its_tasks() {
    use graph::Op::*;
    for _ in 0..10 {
        graph::run(&[
            NewIoThread,
            Spawn(3), // task 0, on the per-run iothread
            Spawn(3), // task 1, there too
            Spawn(1), // task 2
            Spawn(0), // task 3, on the main context
            RdLock(0),
            RdLock(0),
            RdLock(1),
            RdLock(2),
            DropContextInNextWrLock,
            WrLock, // waits for tasks 0 and 1, which the drop cancels inside the wait
            NewIoThread,
            Spawn(3),    // task 0
            Spawn(3),    // task 1, parked
            RdLock(3),   // blocked behind the writer, on the main context
            RdLock(0),   // blocked, on the per-run iothread
            RdLock(2),   // blocked
            DropContext, // cancels tasks 0 (blocked) and 1 (parked)
            WrUnlock,    // tasks 2 and 3 acquire
            NewIoThread,
            Spawn(3), // task 0
            RdLock(0),
            Move(2, 3), // with its read lock
            DropContextInNextWrLock,
            WrLock, // waits for tasks 0 and 2; task 3 unlocks
            WrUnlock,
            Spawn(3), // on the dropped context: cancelled at once
            RdLock(3),
            Move(3, 3), // to the dropped context, with a read lock: cancelled
            NewIoThread,
            Spawn(3),
            RdLock(0),
            Spawn(2),
            Move(1, 3),
        ]);
    }
}

/// Found by the graph-lock fuzzer (a task moved to the per-run iothread's context after
/// its drop hung): an `IoThread` stopped before any task was ever spawned on its
/// context leaves that context open to tasks. The stop cancels tasks only through a
/// run queue that already exists; a later `spawn` or `reschedule_to` creates a fresh,
/// open one, so the task is registered where no thread will ever poll it: never run,
/// never cancelled, its future never dropped and its `JoinHandle` never resolved.
/// (Once a task was ever spawned there, the same calls cancel it, as documented.)
fn task_on_unused_stopped_iothread_is_cancelled(moved: bool) {
    use std::sync::Arc;
    use std::sync::mpsc::{RecvTimeoutError, channel};
    use std::time::Duration;

    use aioctx_aio::{AioContext, IoThread, reschedule_to};

    /// Says when the task's future is dropped.
    struct Dropped(std::sync::mpsc::Sender<()>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    let stopped =
        IoThread::with_builder("stopped", AioContext::builder()).expect("start an iothread");
    let ctx = Arc::clone(stopped.ctx());
    drop(stopped); // no task was ever spawned on `ctx`
    let (tx, rx) = channel();
    let marker = Dropped(tx);
    let _join = if moved {
        let other =
            IoThread::with_builder("other", AioContext::builder()).expect("start an iothread");
        let join = other.ctx().spawn(async move {
            let _marker = marker;
            reschedule_to(&ctx).await;
        });
        std::mem::forget(other); // keep it running for the test
        join
    } else {
        ctx.spawn(async move {
            let _marker = marker;
        })
    };
    // A watchdog, not a timing assertion: a cancelled task's future is dropped at once.
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
        Err(RecvTimeoutError::Timeout) => panic!(
            "a task {} the context of a stopped IoThread on which no task was ever spawned \
             was neither run nor cancelled after 10 s (its future is still alive)",
            if moved { "moved to" } else { "spawned on" }
        ),
    }
}

#[test]
fn regress_spawn_on_unused_stopped_iothread_cancels_the_task() {
    task_on_unused_stopped_iothread_is_cancelled(false);
}

#[test]
fn regress_move_to_unused_stopped_iothread_cancels_the_task() {
    task_on_unused_stopped_iothread_is_cancelled(true);
}
