//! The graph lock against a reference model (QEMU: block/graph-lock.c).
//!
//! Readers are tasks on four contexts — the main context, two iothreads that live as
//! long as the process and one per-run iothread that the run can drop — each
//! obeying commands from the run (take a read lock, drop one, move to another context,
//! yield, exit). The writer is the main loop: every run executes on one long-lived
//! "main loop" thread (the main context's home thread), whatever thread calls [`run`].
//!
//! The model knows, per task, how many read locks it holds, whether it is blocked in
//! `rdlock` behind the writer, and its context; and whether the writer holds the lock.
//! `WrLock` first tells every reader to drop its locks — those unlocks race with the
//! writer's wait, the e3082ab3b3 window — then takes the write lock. After every step
//! the run waits (through `aio_wait`, as the writer does) until every task has acted on
//! its command (the tasks kick after each one, except during `wrlock`, where only the
//! lock's own kicks may wake the writer, so a lost wake-up shows as a hang), and
//! checks: each task's locks and state are the model's, `readers()` equals the number
//! of read guards held (so the sum of the per-context counts is never
//! negative, also after tasks moved between contexts with locks held), `has_writer()`
//! is the model's, and no reader ever acquired while the writer held the lock. A hang
//! (a lost wake-up) is turned into an abort with the step by a watchdog.
//!
//! The main loop's own accesses are in the model too: main-loop read guards, which make
//! `wrlock` panic (as a second `wrlock` under the write lock does, and
//! `rdlock_main_loop` under it), with the message checked and nothing changed; guards a
//! task gives to a thread that runs no context, whose drop must unlock correctly; and a
//! bottom half run by `wrlock`'s own wait that takes and drops a main-loop read guard
//! and a nested write lock.
//!
//! The per-run iothread (context 3) is made by [`Op::NewIoThread`] and dropped by
//! [`Op::DropContext`] between steps, or by a bottom half that runs inside the next
//! `wrlock`'s own wait ([`Op::DropContextInNextWrLock`]; that `wrlock` leaves the
//! iothread's tasks their read locks, so it waits for the drop to release them). The
//! drop cancels the iothread's tasks, on its thread as it exits: the model expects each
//! to end cancelled — its `JoinHandle` yields a cancelled `JoinError` — with its read
//! locks released (so `readers()` falls, and a waiting writer goes on) and, if it was
//! blocked in `rdlock` behind the writer, out of the lock's queue without taking
//! anyone's wake-up. Moving a task to the dropped context, or spawning one on it,
//! cancels that task too; a later `NewIoThread` makes a new one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aioctx_aio::{AioContext, IoThread, JoinHandle, main_context};
use aioctx_graph::{MainLoopGuard, WriteGuard, graph_lock};
use aioctx_testkit::on_main;
use aioctx_wait::wait_while;
use arbitrary::Arbitrary;

mod per_run;
mod reader;

use per_run::{
    DROP_ARMED, PER_RUN_THREAD, PerRun, cancel_per_run_tasks, drop_in_wrlock, expect_cancelled,
    start_per_run_thread, take_per_run_thread,
};
use reader::{Cmd, IN_WRLOCK, Mailbox, VIOLATIONS, WRITER_ACTIVE, reader};

/// How many reader tasks a run has at once.
pub const TASKS: usize = 4;
/// How many contexts readers run on (the main context, two iothreads, and the per-run
/// iothread, the last).
pub const CONTEXTS: usize = 4;
/// The contexts that live as long as the process (the first ones).
const LASTING: usize = 3;
/// The index of the per-run iothread's context.
const PER_RUN: usize = 3;
/// How many read locks one task holds at most (read locks nest).
pub const MAX_HELD: u32 = 3;

/// A top-level operation. `u8` arguments name a task slot (modulo [`TASKS`]) or a
/// context (modulo [`CONTEXTS`]); an operation on an empty slot, or one the model says
/// cannot be sent now (a command to a task blocked in `rdlock`), is a no-op.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Op {
    /// Spawns a reader task on a context into the first free slot.
    Spawn(u8),
    /// The task takes one more read lock (`rdlock().await`).
    RdLock(u8),
    /// The task drops one read lock (`rdunlock`).
    RdUnlock(u8),
    /// The task moves to a context (`reschedule_to`), keeping its locks.
    Move(u8, u8),
    /// The task yields.
    Yield(u8),
    /// The task drops its locks and ends; the run waits for it.
    Exit(u8),
    /// Every reader is told to drop its locks, then the main loop takes the write lock.
    WrLock,
    /// The main loop drops the write lock; blocked readers acquire.
    WrUnlock,
    /// The main loop takes a main-loop read guard (`rdlock_main_loop`); under the write
    /// lock that must panic.
    MainLoopRead,
    /// The main loop drops a main-loop read guard.
    MainLoopUnread,
    /// The task hands one read guard to a thread that runs no context, which drops it
    /// (a task's future dropped where its context is gone).
    GiveAway(u8),
    /// The next `WrLock` first schedules a bottom half on the main context that, if it
    /// runs inside that `wrlock`'s own wait, takes and drops a main-loop read guard and
    /// a nested write lock.
    NestInNextWrLock,
    /// Starts the per-run iothread (context 3) unless it runs: a new one after a drop.
    NewIoThread,
    /// Drops the per-run iothread from the main loop, cancelling its tasks.
    DropContext,
    /// The next `WrLock` does not tell the per-run iothread's tasks to drop their read
    /// locks; instead a bottom half that runs inside its own wait drops the iothread.
    DropContextInNextWrLock,
}

// ---------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskState {
    held: u32,
    blocked: bool,
    ctx: usize,
}

#[derive(Debug, Default)]
struct Model {
    tasks: [Option<TaskState>; TASKS],
    writer: bool,
    /// Main-loop read guards held by the run.
    main_guards: u32,
    /// Whether the next `WrLock` schedules the nesting bottom half.
    nest: bool,
    /// Whether the next `WrLock` drops the per-run iothread inside its wait.
    drop_in_wrlock: bool,
    /// The per-run iothread.
    io3: PerRun,
}

/// The three lasting contexts: main, and two iothreads that live as long as the process.
fn contexts() -> &'static [Arc<AioContext>; LASTING] {
    static CTXS: OnceLock<[Arc<AioContext>; LASTING]> = OnceLock::new();
    CTXS.get_or_init(|| {
        let spawn = |name: &str| {
            // No adaptive busy polling: on a loaded machine the spinning would only
            // slow the fuzzer; the sleeping path is where wake-ups get lost anyway.
            let t = IoThread::with_builder(name, AioContext::builder())
                .unwrap_or_else(|e| panic!("graph fuzz: cannot start iothread {name}: {e}"));
            let ctx = Arc::clone(t.ctx());
            std::mem::forget(t);
            ctx
        };
        [
            Arc::clone(main_context()),
            spawn("fuzz-io1"),
            spawn("fuzz-io2"),
        ]
    })
}

struct Slot {
    mb: Arc<Mailbox>,
    join: JoinHandle<()>,
}

/// Decodes `data` (libFuzzer bytes) and [`run`]s it; undecodable input is ignored.
pub fn run_bytes(data: &[u8]) {
    if let Some(ops) = crate::decode::<Op>(data) {
        run(&ops);
    }
}

/// Runs `ops` on the main-loop thread and checks every step against the model.
///
/// # Panics
/// When the lock and the model disagree (the message names the step); the watchdog
/// aborts the process when a run hangs for 20 s.
pub fn run(ops: &[Op]) {
    let ops = ops.to_vec();
    on_main(move || run_on_main(&ops));
}

fn run_on_main(ops: &[Op]) {
    let ctxs = contexts();
    let watchdog = aioctx_testkit::Watchdog::named("graph_lock", Duration::from_secs(20));
    let mut model = Model::default();
    let mut slots: [Option<Slot>; TASKS] = Default::default();
    let mut writer: Option<WriteGuard<'static>> = None;
    let mut main_guards: Vec<MainLoopGuard<'static>> = Vec::new();
    VIOLATIONS.store(0, Ordering::SeqCst);
    // A per-run iothread left by a run that failed.
    drop(take_per_run_thread());
    // The per-run iothread's context, alive or dropped.
    let mut per_run_ctx: Option<Arc<AioContext>> = None;
    let base_readers = graph_lock().readers();
    assert_eq!(
        base_readers, 0,
        "graph: a read lock is held before the run starts"
    );

    let quiescent = |slots: &[Option<Slot>; TASKS], model: &Model| {
        slots.iter().zip(&model.tasks).all(|(slot, m)| {
            let Some(slot) = slot else { return true };
            let sent = *slot.mb.sent.lock().unwrap();
            let shown = slot.mb.shown.lock().unwrap();
            match m {
                Some(m) if m.blocked => {
                    shown.processed + 1 == sent && shown.state.is_some_and(|s| s.blocked)
                }
                _ => shown.processed == sent,
            }
        })
    };

    let mut steps = ops.iter().copied().map(Some).collect::<Vec<_>>();
    steps.push(None); // the cleanup
    for (step, op) in steps.into_iter().enumerate() {
        watchdog.note(|s| *s = format!("step {step}: {op:?}; model {model:?}"));
        let Some(op) = op else {
            // Cleanup: release the main-loop guards and the writer, then end every task.
            main_guards.clear();
            model.main_guards = 0;
            if let Some(w) = writer.take() {
                WRITER_ACTIVE.store(false, Ordering::SeqCst);
                drop(w);
                model.writer = false;
                for t in model.tasks.iter_mut().flatten() {
                    if t.blocked {
                        t.blocked = false;
                        t.held += 1;
                    }
                }
            }
            wait_while(None, || !quiescent(&slots, &model));
            for (i, slot) in slots.iter_mut().enumerate() {
                if let Some(s) = slot.take() {
                    s.mb.send(Cmd::Exit);
                    wait_while(None, || !s.mb.shown.lock().unwrap().done);
                    model.tasks[i] = None;
                }
            }
            drop(take_per_run_thread());
            let left = graph_lock().readers();
            assert_eq!(
                left, 0,
                "graph: {left} read locks left after every task ended"
            );
            break;
        };
        let task = |t: u8| usize::from(t) % TASKS;
        match op {
            Op::Spawn(c) => {
                let c = usize::from(c) % CONTEXTS;
                let target = match (c, &per_run_ctx) {
                    (c, _) if c < LASTING => Arc::clone(&ctxs[c]),
                    (_, Some(t)) => Arc::clone(t),
                    (_, None) => continue,
                };
                if c == PER_RUN && model.io3 == PerRun::Dropped {
                    // Refused: cancelled at once, never polled.
                    let join = target.spawn(reader(Arc::new(Mailbox::default()), c));
                    let r = main_context().block_on(join);
                    assert!(
                        matches!(&r, Err(e) if e.is_cancelled()),
                        "graph: step {step} ({op:?}): a task spawned on a dropped context \
                         must be cancelled, its JoinHandle gave {r:?}; ops: {ops:?}"
                    );
                } else if let Some(free) = slots.iter().position(Option::is_none) {
                    let mb = Arc::new(Mailbox::default());
                    mb.shown.lock().unwrap().state = Some(TaskState {
                        held: 0,
                        blocked: false,
                        ctx: c,
                    });
                    let join = target.spawn(reader(Arc::clone(&mb), c));
                    slots[free] = Some(Slot { mb, join });
                    model.tasks[free] = Some(TaskState {
                        held: 0,
                        blocked: false,
                        ctx: c,
                    });
                }
            }
            Op::RdLock(t)
            | Op::RdUnlock(t)
            | Op::Move(t, _)
            | Op::Yield(t)
            | Op::Exit(t)
            | Op::GiveAway(t) => {
                let i = task(t);
                let io3 = model.io3;
                let mut cancelled = false;
                let (Some(slot), Some(m)) = (&slots[i], &mut model.tasks[i]) else {
                    continue;
                };
                if m.blocked {
                    continue;
                }
                let cmd = match op {
                    Op::RdLock(_) if m.held < MAX_HELD => {
                        if model.writer {
                            m.blocked = true;
                        } else {
                            m.held += 1;
                        }
                        Cmd::Lock
                    }
                    Op::RdUnlock(_) if m.held > 0 => {
                        m.held -= 1;
                        Cmd::Unlock
                    }
                    Op::Move(_, c) => {
                        let c = usize::from(c) % CONTEXTS;
                        let target = match (c, &per_run_ctx) {
                            (c, _) if c < LASTING => Arc::clone(&ctxs[c]),
                            (_, Some(t)) => Arc::clone(t),
                            (_, None) => continue,
                        };
                        if c == PER_RUN && io3 == PerRun::Dropped {
                            cancelled = true;
                        } else {
                            m.ctx = c;
                        }
                        Cmd::Move(c, target)
                    }
                    Op::Yield(_) => Cmd::Yield,
                    Op::Exit(_) => Cmd::Exit,
                    Op::GiveAway(_) if m.held > 0 => {
                        m.held -= 1;
                        Cmd::GiveAway
                    }
                    _ => continue,
                };
                let exit = matches!(cmd, Cmd::Exit);
                slot.mb.send(cmd);
                if cancelled {
                    let why = format!("step {step} ({op:?}): moved to a dropped context");
                    expect_cancelled(&mut slots, &mut model, i, &why, ops);
                } else if exit {
                    let s = slots[i].take().expect("checked above");
                    wait_while(None, || !s.mb.shown.lock().unwrap().done);
                    main_context()
                        .block_on(s.join)
                        .expect("the main context outlives its tasks");
                    model.tasks[i] = None;
                }
            }
            Op::WrLock => {
                if writer.is_some() || model.main_guards > 0 {
                    // Refused with a panic, before anything changes.
                    let want = if writer.is_some() {
                        "already held"
                    } else {
                        "main-loop read guard"
                    };
                    let msg = panic_message(|| drop(graph_lock().wrlock()));
                    assert!(
                        msg.as_deref().is_some_and(|m| m.contains(want)),
                        "graph: step {step} ({op:?}): wrlock with {want} must panic saying so, \
                         got {msg:?}; ops: {ops:?}"
                    );
                    continue;
                }
                if std::mem::take(&mut model.nest) {
                    main_context().schedule_oneshot(nested_in_wrlock);
                }
                let drop_armed =
                    std::mem::take(&mut model.drop_in_wrlock) && model.io3 == PerRun::Alive;
                if drop_armed {
                    // SeqCst: with IN_WRLOCK, read by `drop_in_wrlock` on this thread.
                    DROP_ARMED.store(true, Ordering::SeqCst);
                    main_context().schedule_oneshot(drop_in_wrlock);
                }
                IN_WRLOCK.store(true, Ordering::SeqCst);
                for (slot, m) in slots.iter().zip(model.tasks.iter_mut()) {
                    if let (Some(slot), Some(m)) = (slot, m)
                        && m.held > 0
                        && !(drop_armed && m.ctx == PER_RUN)
                    {
                        m.held = 0;
                        slot.mb.send(Cmd::UnlockAll);
                    }
                }
                let w = graph_lock().wrlock();
                // SeqCst: pairs with the load in `Mailbox::show`.
                IN_WRLOCK.store(false, Ordering::SeqCst);
                DROP_ARMED.store(false, Ordering::SeqCst);
                if drop_armed {
                    let dropped = PER_RUN_THREAD
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_none();
                    if dropped {
                        model.io3 = PerRun::Dropped;
                        let why = format!("step {step} ({op:?}): context dropped inside wrlock");
                        cancel_per_run_tasks(&mut slots, &mut model, &why, ops);
                    } else {
                        // The bottom half did not run inside the wait, so the wait
                        // did not wait for the per-run tasks' locks: they had none.
                        let held: u32 = model.tasks.iter().flatten().map(|t| t.held).sum();
                        assert_eq!(
                            held, 0,
                            "graph: step {step} ({op:?}): wrlock returned while tasks of \
                             the per-run iothread held {held} read locks; ops: {ops:?}"
                        );
                    }
                }
                WRITER_ACTIVE.store(true, Ordering::SeqCst);
                writer = Some(w);
                model.writer = true;
            }
            Op::MainLoopRead => {
                if writer.is_some() {
                    let msg = panic_message(|| drop(graph_lock().rdlock_main_loop()));
                    assert!(
                        msg.as_deref()
                            .is_some_and(|m| m.contains("write lock is held")),
                        "graph: step {step} ({op:?}): rdlock_main_loop under the write lock \
                         must panic saying so, got {msg:?}; ops: {ops:?}"
                    );
                } else if model.main_guards < MAX_HELD {
                    main_guards.push(graph_lock().rdlock_main_loop());
                    model.main_guards += 1;
                }
            }
            Op::MainLoopUnread => {
                if main_guards.pop().is_some() {
                    model.main_guards -= 1;
                }
            }
            Op::NestInNextWrLock => model.nest = true,
            Op::DropContextInNextWrLock => model.drop_in_wrlock = true,
            Op::NewIoThread => {
                if model.io3 == PerRun::Alive {
                    continue;
                }
                per_run_ctx = Some(start_per_run_thread());
                model.io3 = PerRun::Alive;
            }
            Op::DropContext => {
                if model.io3 != PerRun::Alive {
                    continue;
                }
                // Joins the thread, which cancels the tasks as it exits.
                drop(take_per_run_thread());
                model.io3 = PerRun::Dropped;
                let why = format!("step {step} ({op:?})");
                cancel_per_run_tasks(&mut slots, &mut model, &why, ops);
            }
            Op::WrUnlock => {
                let Some(w) = writer.take() else { continue };
                WRITER_ACTIVE.store(false, Ordering::SeqCst);
                drop(w);
                model.writer = false;
                for t in model.tasks.iter_mut().flatten() {
                    if t.blocked {
                        t.blocked = false;
                        t.held += 1;
                    }
                }
            }
        }
        wait_while(None, || !quiescent(&slots, &model));
        // Guards given away are dropped on a thread that runs no context.
        for slot in slots.iter().flatten() {
            if let Some(g) = slot.mb.given.lock().unwrap().take() {
                crate::on_remote_thread(move || drop(g));
            }
        }
        for (i, (slot, m)) in slots.iter().zip(&model.tasks).enumerate() {
            let real = slot.as_ref().and_then(|s| s.mb.shown.lock().unwrap().state);
            assert_eq!(
                real, *m,
                "graph: step {step} ({op:?}): task {i} is {real:?}, the model says {m:?}; \
                 ops: {ops:?}"
            );
        }
        let held: u32 = model.tasks.iter().flatten().map(|t| t.held).sum();
        let readers = graph_lock().readers();
        assert_eq!(
            readers, held,
            "graph: step {step} ({op:?}): readers() is {readers} (as i32: {}) with {held} read \
             guards held; ops: {ops:?}",
            readers as i32
        );
        assert_eq!(
            graph_lock().has_writer(),
            model.writer,
            "graph: step {step} ({op:?}): has_writer() differs from the model; ops: {ops:?}"
        );
        let v = VIOLATIONS.load(Ordering::SeqCst);
        assert_eq!(
            v, 0,
            "graph: step {step} ({op:?}): a reader acquired while the writer held the lock; \
             ops: {ops:?}"
        );
    }
    drop(watchdog);
}

/// The bottom half of [`Op::NestInNextWrLock`]: inside the run's `wrlock` wait (and only
/// there: elsewhere a nested writer could wait for read locks the model keeps held),
/// a main-loop read guard and a nested write lock, both dropped before it returns.
fn nested_in_wrlock() {
    if IN_WRLOCK.load(Ordering::SeqCst) && !graph_lock().has_writer() {
        drop(graph_lock().rdlock_main_loop());
        drop(graph_lock().wrlock());
        NESTED_WRITERS.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many nested write locks [`nested_in_wrlock`] took (for the unit test).
static NESTED_WRITERS: AtomicU32 = AtomicU32::new(0);

/// Runs `f`, which should panic, and returns the panic's message (`None` when it did
/// not panic).
fn panic_message(f: impl FnOnce()) -> Option<String> {
    let err = crate::catch_expected_panic(f)?;
    Some(
        err.downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::Op::*;

    /// Each of the main loop's own accesses against the write lock, and a guard dropped
    /// where no context runs, in one run (the fuzzer finds these; this keeps them in
    /// every `cargo test`).
    #[test]
    fn main_loop_guards_nested_writer_and_given_away_guards() {
        super::run(&[
            Spawn(1),
            Spawn(0),
            RdLock(0),
            RdLock(1),
            MainLoopRead,
            WrLock, // refused: a main-loop read guard is alive
            MainLoopUnread,
            GiveAway(0), // dropped on a thread with no context
            RdLock(0),
            NestInNextWrLock,
            WrLock,
            MainLoopRead, // refused: the write lock is held
            WrLock,       // refused: already held
            RdLock(1),    // blocks behind the writer
            WrUnlock,
            GiveAway(1),
            Move(0, 2),
            GiveAway(0),
            RdLock(1),
            NestInNextWrLock,
            WrLock,
            WrUnlock,
        ]);
        // Both writers waited for a reader on the main context, so the bottom half ran
        // inside their waits.
        assert_eq!(super::NESTED_WRITERS.load(super::Ordering::Relaxed), 2);
    }
}
