//! The per-run iothread of the graph-lock model (context 3): started and dropped by
//! the run, and what its drop must do to its tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aioctx_aio::{AioContext, IoThread, main_context};
use aioctx_wait::wait_while;

use super::reader::IN_WRLOCK;
use super::{Model, Op, PER_RUN, Slot, TASKS};

/// The state of the per-run iothread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum PerRun {
    /// Not started in this run: operations naming its context are no-ops.
    #[default]
    Absent,
    Alive,
    /// Dropped: its context refuses tasks.
    Dropped,
}

/// The running per-run iothread. A static so that the bottom half of
/// [`Op::DropContextInNextWrLock`] can drop it; only the main-loop thread touches it.
pub(super) static PER_RUN_THREAD: Mutex<Option<IoThread>> = Mutex::new(None);
/// Set by the main loop while it waits in a `wrlock` that is to drop the per-run
/// iothread (see [`drop_in_wrlock`]).
pub(super) static DROP_ARMED: AtomicBool = AtomicBool::new(false);

pub(super) fn take_per_run_thread() -> Option<IoThread> {
    PER_RUN_THREAD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
}

/// Starts the per-run iothread and returns its context.
pub(super) fn start_per_run_thread() -> Arc<AioContext> {
    let t = IoThread::with_builder("fuzz-io3", AioContext::builder())
        .unwrap_or_else(|e| panic!("graph fuzz: cannot start iothread fuzz-io3: {e}"));
    let ctx = Arc::clone(t.ctx());
    *PER_RUN_THREAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    ctx
}

/// The bottom half of [`Op::DropContextInNextWrLock`]: inside the run's `wrlock` wait
/// (and only there), drops the per-run iothread.
pub(super) fn drop_in_wrlock() {
    // SeqCst: both stored by the main loop, on this thread, around its `wrlock`.
    if DROP_ARMED.load(Ordering::SeqCst) && IN_WRLOCK.load(Ordering::SeqCst) {
        drop(take_per_run_thread());
    }
}

/// Task `i` is being cancelled: waits until its future was dropped (its read guards
/// first), checks that its `JoinHandle` says cancelled, and empties its slot.
pub(super) fn expect_cancelled(
    slots: &mut [Option<Slot>; TASKS],
    model: &mut Model,
    i: usize,
    why: &str,
    ops: &[Op],
) {
    let s = slots[i].take().expect("a task to cancel");
    wait_while(None, || !s.mb.shown.lock().unwrap().cancelled);
    let r = main_context().block_on(s.join);
    assert!(
        matches!(&r, Err(e) if e.is_cancelled()),
        "graph: {why}: task {i} must end cancelled, its JoinHandle gave {r:?}; ops: {ops:?}"
    );
    model.tasks[i] = None;
}

/// The per-run iothread was dropped: every task on it ends cancelled.
pub(super) fn cancel_per_run_tasks(
    slots: &mut [Option<Slot>; TASKS],
    model: &mut Model,
    why: &str,
    ops: &[Op],
) {
    for i in 0..TASKS {
        if model.tasks[i].is_some_and(|t| t.ctx == PER_RUN) {
            expect_cancelled(slots, model, i, why, ops);
        }
    }
}
