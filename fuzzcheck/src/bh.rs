//! Bottom halves against a reference model of their rules (`aio/src/bh.rs`, \[BH1\]–\[BH9\]).
//!
//! The model keeps, per BH, the flags (pending, scheduled, idle, deleted, oneshot) and
//! whether its callback is running; the context's pending list (FIFO by the moment a
//! BH became pending) and the stack of slices of the polls in progress. A poll takes the
//! whole list as a new slice and runs slices oldest first (a nested poll drains its
//! parents' slices too); running a BH clears pending, scheduled and idle, and calls it
//! only if it was scheduled and not deleted. A BH whose callback is already running
//! (it rescheduled itself and then polled from inside its own callback) cannot run
//! again re-entrantly: the schedule is deferred (on no list) and the BH goes back on the
//! list when its callback returns, so it runs at the first poll after that (\[BH7\]).
//!
//! A callback may panic (`Action::Panic`): the panic unwinds through the nested polls
//! and callbacks above it and out of the outermost `poll`, which the run catches. On the
//! way out each callback is put back in its cell, a schedule deferred by \[BH7\] goes
//! back on the list (no schedule is lost to a panic), and the BHs left in the slices
//! run at the next `poll`.
//!
//! After every operation the run checks that the callbacks that ran (and the results of
//! the nested polls they made) are exactly the model's, in the model's order, that
//! `poll` returned the model's progress, and that `is_scheduled` matches for every
//! handle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aioctx_aio::{AioContext, Bh};
use arbitrary::Arbitrary;

/// How many BH handles a run holds at once.
pub const SLOTS: usize = 6;
/// How deep callbacks may nest polls.
pub const MAX_DEPTH: u32 = 3;
/// How many actions a BH's callback performs.
pub const MAX_ACTIONS: usize = 3;

/// A top-level operation. `u8` arguments name a handle slot (modulo [`SLOTS`]); an
/// empty slot makes the operation a no-op.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `bh_new` into the first free slot; its callback performs the actions.
    New(Vec<Action>),
    /// `schedule`.
    Schedule(u8),
    /// `schedule_idle`.
    ScheduleIdle(u8),
    /// `cancel`.
    Cancel(u8),
    /// Drops the handle (`qemu_bh_delete`).
    Delete(u8),
    /// `schedule` called on a second thread (the call returns before the next step).
    RemoteSchedule(u8),
    /// `schedule_oneshot` with a callback performing the actions.
    Oneshot(Vec<Action>),
    /// `poll(false)`.
    Poll,
    /// `poll(true)` when a non-idle BH is scheduled (so it cannot sleep), else
    /// `poll(false)`.
    PollBlocking,
}

/// What a BH's callback does when it runs.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Action {
    /// `schedule` a slot (maybe its own).
    Schedule(u8),
    /// `schedule_idle` a slot.
    ScheduleIdle(u8),
    /// `cancel` a slot.
    Cancel(u8),
    /// Drop a slot's handle (maybe its own: delete from inside the callback).
    Delete(u8),
    /// `schedule` a slot from the second thread.
    RemoteSchedule(u8),
    /// `schedule_oneshot` of a callback that does nothing.
    Oneshot,
    /// `poll(false)` from inside the callback (up to [`MAX_DEPTH`] deep).
    NestedPoll,
    /// Panic: the rest of the callback does not run, the panic unwinds through every
    /// nested poll and callback above it and out of the outermost `poll`.
    Panic,
}

/// What a top-level poll returned: its progress, or the panic of a callback it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Progress(bool),
    Panicked,
}

/// The payload of [`Action::Panic`]: raised with `resume_unwind`, so the panic hook
/// (and its message on stderr) is skipped.
struct FuzzPanic;

/// What the run observes: a callback ran, or a nested poll returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Ran(u32),
    Nested(bool),
}

fn slot(i: u8) -> usize {
    usize::from(i) % SLOTS
}

// ---------------------------------------------------------------------------------
// The model.

#[derive(Debug)]
struct MBh {
    pending: bool,
    scheduled: bool,
    idle: bool,
    deleted: bool,
    oneshot: bool,
    running: bool,
    /// A schedule deferred by a nested poll while the callback ran: `Some(idle)`.
    deferred: Option<bool>,
    actions: Vec<Action>,
}

#[derive(Debug, Default)]
struct Model {
    bhs: Vec<MBh>,
    slots: [Option<u32>; SLOTS],
    list: Vec<u32>,
    slices: VecDeque<VecDeque<u32>>,
    depth: u32,
    trace: Vec<Event>,
    /// A callback panicked: every poll and callback on the stack unwinds.
    unwinding: bool,
}

impl Model {
    fn create(&mut self, actions: Vec<Action>, oneshot: bool) -> u32 {
        let id = self.bhs.len() as u32;
        self.bhs.push(MBh {
            pending: false,
            scheduled: false,
            idle: false,
            deleted: false,
            oneshot,
            running: false,
            deferred: None,
            actions,
        });
        id
    }

    fn enqueue(&mut self, id: u32, idle: bool) {
        let bh = &mut self.bhs[id as usize];
        bh.scheduled = true;
        bh.idle |= idle;
        if !bh.pending {
            bh.pending = true;
            self.list.push(id);
        }
    }

    fn schedule(&mut self, s: usize, idle: bool) {
        if let Some(id) = self.slots[s] {
            self.enqueue(id, idle);
        }
    }

    fn cancel(&mut self, s: usize) {
        if let Some(id) = self.slots[s] {
            let bh = &mut self.bhs[id as usize];
            bh.scheduled = false;
            bh.deferred = None;
        }
    }

    fn delete(&mut self, s: usize) {
        if let Some(id) = self.slots[s].take() {
            self.bhs[id as usize].deleted = true;
        }
    }

    fn is_scheduled(&self, s: usize) -> Option<bool> {
        let bh = &self.bhs[self.slots[s]? as usize];
        Some((bh.scheduled || bh.deferred.is_some()) && !bh.deleted)
    }

    /// Whether a blocking poll would not sleep: a non-idle BH is scheduled.
    fn must_run_now(&self) -> bool {
        self.list
            .iter()
            .chain(self.slices.iter().flatten())
            .any(|&id| {
                let bh = &self.bhs[id as usize];
                bh.scheduled && !bh.deleted && !bh.idle
            })
    }

    fn poll(&mut self) -> bool {
        let taken: VecDeque<u32> = std::mem::take(&mut self.list).into();
        if !taken.is_empty() {
            self.slices.push_back(taken);
        }
        let mut progress = false;
        loop {
            let next = loop {
                let Some(slice) = self.slices.front_mut() else {
                    break None;
                };
                match slice.pop_front() {
                    Some(id) => break Some(id),
                    None => {
                        self.slices.pop_front();
                    }
                }
            };
            let Some(id) = next else { break };
            let bh = &mut self.bhs[id as usize];
            let (scheduled, idle) = (bh.scheduled, bh.idle);
            bh.pending = false;
            bh.scheduled = false;
            bh.idle = false;
            if !scheduled || bh.deleted {
                continue;
            }
            if bh.running {
                // Cannot run re-entrantly: deferred until its callback returns. Like the
                // idle bit of a pending BH, an idle deferral stays idle (flags OR).
                bh.deferred = Some(bh.deferred.unwrap_or(false) | idle);
                continue;
            }
            bh.running = true;
            let actions = bh.actions.clone();
            self.trace.push(Event::Ran(id));
            for a in actions {
                self.action(a);
                if self.unwinding {
                    break;
                }
            }
            // On return and on unwind alike: the callback is back in its cell, a
            // deferred schedule goes back on the list ([BH7]: no schedule is lost),
            // a oneshot is gone. The BHs left in the slices stay for the next poll.
            let bh = &mut self.bhs[id as usize];
            bh.running = false;
            if let Some(idle) = bh.deferred.take() {
                self.enqueue(id, idle);
            }
            let bh = &mut self.bhs[id as usize];
            if bh.oneshot {
                bh.deleted = true;
            }
            if self.unwinding {
                return false;
            }
            progress |= !idle;
        }
        progress
    }

    /// A top-level `poll`: its progress, or the panic that unwound out of it.
    fn poll_outermost(&mut self) -> Outcome {
        let progress = self.poll();
        if std::mem::take(&mut self.unwinding) {
            Outcome::Panicked
        } else {
            Outcome::Progress(progress)
        }
    }

    fn action(&mut self, a: Action) {
        match a {
            Action::Schedule(s) | Action::RemoteSchedule(s) => self.schedule(slot(s), false),
            Action::ScheduleIdle(s) => self.schedule(slot(s), true),
            Action::Cancel(s) => self.cancel(slot(s)),
            Action::Delete(s) => self.delete(slot(s)),
            Action::Oneshot => {
                let id = self.create(Vec::new(), true);
                self.enqueue(id, false);
            }
            Action::NestedPoll => {
                if self.depth < MAX_DEPTH {
                    self.depth += 1;
                    let r = self.poll();
                    self.depth -= 1;
                    if !self.unwinding {
                        self.trace.push(Event::Nested(r));
                    }
                }
            }
            Action::Panic => self.unwinding = true,
        }
    }
}

// ---------------------------------------------------------------------------------
// The real thing.

/// A slot's BH: its id and handle.
type Handle = (u32, Arc<Bh>);

struct Shared {
    ctx: Arc<AioContext>,
    slots: Mutex<[Option<Handle>; SLOTS]>,
    log: Mutex<Vec<Event>>,
    next_id: Mutex<u32>,
    depth: Mutex<u32>,
}

impl Shared {
    fn handle(&self, s: usize) -> Option<Arc<Bh>> {
        self.slots.lock().unwrap()[s]
            .as_ref()
            .map(|(_, bh)| Arc::clone(bh))
    }

    fn new_id(&self) -> u32 {
        let mut n = self.next_id.lock().unwrap();
        *n += 1;
        *n - 1
    }

    fn callback(self: &Arc<Self>, id: u32, actions: Vec<Action>) -> impl FnMut() + Send + use<> {
        let shared = Arc::clone(self);
        move || {
            shared.log.lock().unwrap().push(Event::Ran(id));
            for &a in &actions {
                shared.action(a);
            }
        }
    }

    fn new_bh(self: &Arc<Self>, actions: Vec<Action>) {
        let mut slots = self.slots.lock().unwrap();
        let Some(free) = slots.iter().position(Option::is_none) else {
            return;
        };
        let id = self.new_id();
        let bh = self.ctx.bh_new(self.callback(id, actions));
        slots[free] = Some((id, Arc::new(bh)));
    }

    fn oneshot(self: &Arc<Self>, actions: Vec<Action>) {
        let id = self.new_id();
        self.ctx.schedule_oneshot(self.callback(id, actions));
    }

    fn delete(&self, s: usize) {
        let gone = self.slots.lock().unwrap()[s].take();
        drop(gone);
    }

    fn remote_schedule(&self, s: usize) {
        if let Some(bh) = self.handle(s) {
            crate::on_remote_thread(move || bh.schedule());
        }
    }

    fn action(self: &Arc<Self>, a: Action) {
        match a {
            Action::Schedule(s) => {
                if let Some(bh) = self.handle(slot(s)) {
                    bh.schedule();
                }
            }
            Action::ScheduleIdle(s) => {
                if let Some(bh) = self.handle(slot(s)) {
                    bh.schedule_idle();
                }
            }
            Action::Cancel(s) => {
                if let Some(bh) = self.handle(slot(s)) {
                    bh.cancel();
                }
            }
            Action::Delete(s) => self.delete(slot(s)),
            Action::RemoteSchedule(s) => self.remote_schedule(slot(s)),
            Action::Oneshot => self.oneshot(Vec::new()),
            Action::NestedPoll => {
                /// Lowers the depth on return and on unwind.
                struct Nest<'a>(&'a Mutex<u32>);
                impl Drop for Nest<'_> {
                    fn drop(&mut self) {
                        *self.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    }
                }
                let depth = *self.depth.lock().unwrap();
                if depth < MAX_DEPTH {
                    *self.depth.lock().unwrap() += 1;
                    let _nest = Nest(&self.depth);
                    let r = self.ctx.poll(false);
                    self.log.lock().unwrap().push(Event::Nested(r));
                }
            }
            Action::Panic => std::panic::resume_unwind(Box::new(FuzzPanic)),
        }
    }
}

thread_local! {
    /// One context per thread, reused across runs (a run leaves it empty): creating a
    /// ring per run would dominate the fuzzer's time.
    static CTX: Arc<AioContext> = AioContext::builder()
        .name("fuzz-bh")
        .build()
        .unwrap_or_else(|e| panic!("bh fuzz: cannot create an AioContext: {e}"));
}

/// `ctx.poll(blocking)`, catching a panic raised by [`Action::Panic`] (any other panic
/// is a failure and resumes).
fn poll_outermost(ctx: &AioContext, blocking: bool) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.poll(blocking))) {
        Ok(progress) => Outcome::Progress(progress),
        Err(payload) if payload.is::<FuzzPanic>() => Outcome::Panicked,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Decodes `data` (libFuzzer bytes) and [`run`]s it; undecodable input is ignored.
pub fn run_bytes(data: &[u8]) {
    if let Some(ops) = crate::decode::<Op>(data) {
        run(&ops);
    }
}

/// Runs `ops` on the calling thread's context and checks every step against the model.
///
/// # Panics
/// When the real bottom halves and the model disagree (the message names the step), or
/// when the run hangs for 20 s (the watchdog aborts).
pub fn run(ops: &[Op]) {
    let ctx = CTX.with(Arc::clone);
    // Leftovers of an earlier run that panicked halfway.
    while poll_outermost(&ctx, false) != Outcome::Progress(false) {}
    let watchdog = aioctx_testkit::Watchdog::named("bh_schedule", Duration::from_secs(20));
    let shared = Arc::new(Shared {
        ctx: Arc::clone(&ctx),
        slots: Mutex::new(Default::default()),
        log: Mutex::new(Vec::new()),
        next_id: Mutex::new(0),
        depth: Mutex::new(0),
    });
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        watchdog.note(|s| *s = format!("step {step}: {op:?}"));
        let (got, want) = match op {
            Op::New(actions) => {
                let actions: Vec<Action> = actions.iter().copied().take(MAX_ACTIONS).collect();
                shared.new_bh(actions.clone());
                if let Some(free) = model.slots.iter().position(Option::is_none) {
                    let id = model.create(actions, false);
                    model.slots[free] = Some(id);
                }
                (None, None)
            }
            Op::Schedule(s) => {
                if let Some(bh) = shared.handle(slot(*s)) {
                    bh.schedule();
                }
                model.schedule(slot(*s), false);
                (None, None)
            }
            Op::ScheduleIdle(s) => {
                if let Some(bh) = shared.handle(slot(*s)) {
                    bh.schedule_idle();
                }
                model.schedule(slot(*s), true);
                (None, None)
            }
            Op::Cancel(s) => {
                if let Some(bh) = shared.handle(slot(*s)) {
                    bh.cancel();
                }
                model.cancel(slot(*s));
                (None, None)
            }
            Op::Delete(s) => {
                shared.delete(slot(*s));
                model.delete(slot(*s));
                (None, None)
            }
            Op::RemoteSchedule(s) => {
                shared.remote_schedule(slot(*s));
                model.schedule(slot(*s), false);
                (None, None)
            }
            Op::Oneshot(actions) => {
                let actions: Vec<Action> = actions.iter().copied().take(MAX_ACTIONS).collect();
                shared.oneshot(actions.clone());
                let id = model.create(actions, true);
                model.enqueue(id, false);
                (None, None)
            }
            Op::Poll => (
                Some(poll_outermost(&ctx, false)),
                Some(model.poll_outermost()),
            ),
            Op::PollBlocking => {
                let blocking = model.must_run_now();
                (
                    Some(poll_outermost(&ctx, blocking)),
                    Some(model.poll_outermost()),
                )
            }
        };
        let log = std::mem::take(&mut *shared.log.lock().unwrap());
        let trace = std::mem::take(&mut model.trace);
        assert_eq!(
            log, trace,
            "bh: step {step} ({op:?}): callbacks that ran (left) differ from the model \
             (right); ops: {ops:?}"
        );
        assert_eq!(
            got, want,
            "bh: step {step} ({op:?}): poll's progress differs from the model; ops: {ops:?}"
        );
        for s in 0..SLOTS {
            let real = shared.handle(s).map(|bh| bh.is_scheduled());
            assert_eq!(
                real,
                model.is_scheduled(s),
                "bh: step {step} ({op:?}): is_scheduled of slot {s} differs from the model; \
                 ops: {ops:?}"
            );
        }
    }
    // Leave the context empty: delete every BH, let pending oneshots run.
    for s in 0..SLOTS {
        shared.delete(s);
    }
    while poll_outermost(&ctx, false) != Outcome::Progress(false) {}
    drop(watchdog);
}
