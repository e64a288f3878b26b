//! Timers against a reference model (\[T1\]–\[T4\] (`timer.rs`); QEMU's
//! `timer_mod` / `timer_mod_anticipate` / `timer_del` / `timerlist_run_timers`).
//!
//! The clock is the real monotonic one, so the checks never depend on how fast the
//! machine runs: every deadline is computed by the run and handed to both sides, and a
//! `poll` is bracketed by two clock reads `t0 <= now_poll <= t1`. The timers that fired
//! must be exactly a prefix of the model's list in `(deadline, id)` order (callbacks may
//! change the list as they run), every fired deadline `<= now_poll`, and the first one
//! left `> now_poll`, for some `now_poll` in `[t0, t1]`. So a deadline clearly in the
//! past must fire on the next poll, one in the far future must not, and one near "now"
//! may go either way. `pending()` and `expire_time()` must match the model exactly after
//! every step.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aioctx_aio::{AioContext, ClockType, Timer};
use arbitrary::Arbitrary;

/// How many timer handles a run holds at once.
pub const SLOTS: usize = 6;
/// How many actions a timer's callback performs.
pub const MAX_ACTIONS: usize = 3;
/// "Far in the future": later than any run can last.
const FAR_NS: i64 = 3600 * 1_000_000_000;

/// A deadline, relative to the clock when the operation runs (or to the run's start for
/// callback actions).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Deadline {
    /// `now - (v + 1)` µs: already expired.
    Past(u16),
    /// `now + v` µs: near now; may or may not have expired at the next poll.
    Near(i16),
    /// `now + 1 h + v` ms: must not fire during the run.
    Far(u16),
    /// An absolute deadline in ns (negative ones clamp to 0).
    Raw(i64),
}

impl Deadline {
    fn at(self, now: i64) -> i64 {
        match self {
            Deadline::Past(v) => now - (i64::from(v) + 1) * 1000,
            Deadline::Near(v) => now + i64::from(v) * 1000,
            Deadline::Far(v) => now + FAR_NS + i64::from(v) * 1_000_000,
            Deadline::Raw(v) => v,
        }
    }
}

/// A top-level operation. `u8` arguments name a handle slot (modulo [`SLOTS`]); an
/// empty slot makes the operation a no-op.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `timer_new` into the first free slot; its callback performs the actions.
    New(Vec<Action>),
    /// `modify`.
    Modify(u8, Deadline),
    /// `modify_anticipate`.
    Anticipate(u8, Deadline),
    /// `modify` called on a second thread.
    RemoteModify(u8, Deadline),
    /// `delete` (disarm).
    Delete(u8),
    /// Drops the handle.
    Drop(u8),
    /// Lets the clock advance by `v % 64` µs (busy wait).
    Advance(u8),
    /// `poll(false)`.
    Poll,
    /// `poll(true)` when a timer is already due (so it cannot sleep), else `poll(false)`.
    PollBlocking,
}

/// What a timer's callback does when it fires. A timer armed by a callback never runs
/// in the same poll, even when its deadline has passed (\[T3\] (`timer.rs`)).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Action {
    /// `modify` a slot (maybe its own) to `start + 1 h + v ms`.
    ModifyFar(u8, u16),
    /// `modify_anticipate` a slot to `start + 1 h + v ms`.
    AnticipateFar(u8, u16),
    /// `delete` a slot.
    Delete(u8),
    /// Drops a slot's handle (maybe its own, from inside its callback).
    Drop(u8),
    /// `modify` a slot (maybe its own) to `start - (v + 1) µs`: already due, but armed
    /// during the pass, so it runs at the next poll at the earliest.
    ModifyPast(u8, u16),
}

fn slot(i: u8) -> usize {
    usize::from(i) % SLOTS
}

fn far(start: i64, v: u16) -> i64 {
    start + FAR_NS + i64::from(v) * 1_000_000
}

fn past(start: i64, v: u16) -> i64 {
    start - (i64::from(v) + 1) * 1000
}

// ---------------------------------------------------------------------------------
// The model.

#[derive(Debug)]
struct MTimer {
    expire: Option<i64>,
    actions: Vec<Action>,
}

#[derive(Debug, Default)]
struct Model {
    timers: Vec<MTimer>,
    slots: [Option<u32>; SLOTS],
    start: i64,
    /// Timers armed during the current poll's timer pass: not due in it ([T3]).
    armed_in_pass: Vec<u32>,
}

impl Model {
    fn modify(&mut self, s: usize, expire: i64, anticipate: bool) {
        let Some(id) = self.slots[s] else { return };
        let t = &mut self.timers[id as usize];
        let expire = expire.max(0);
        if anticipate && t.expire.is_some_and(|old| old <= expire) {
            return;
        }
        t.expire = Some(expire);
        self.armed_in_pass.push(id);
    }

    fn delete(&mut self, s: usize) {
        if let Some(id) = self.slots[s] {
            self.timers[id as usize].expire = None;
        }
    }

    fn drop_slot(&mut self, s: usize) {
        if let Some(id) = self.slots[s].take() {
            self.timers[id as usize].expire = None;
        }
    }

    fn expire_time(&self, s: usize) -> Option<Option<i64>> {
        Some(self.timers[self.slots[s]? as usize].expire)
    }

    /// The armed timer that fires first: `(deadline, id)`, leaving out those armed
    /// during the current pass ([T3]).
    fn first(&self) -> Option<(i64, u32)> {
        self.timers
            .iter()
            .enumerate()
            .filter(|&(id, _)| !self.armed_in_pass.contains(&(id as u32)))
            .filter_map(|(id, t)| Some((t.expire?, id as u32)))
            .min()
    }

    fn action(&mut self, a: Action) {
        match a {
            Action::ModifyFar(s, v) => self.modify(slot(s), far(self.start, v), false),
            Action::AnticipateFar(s, v) => self.modify(slot(s), far(self.start, v), true),
            Action::Delete(s) => self.delete(slot(s)),
            Action::Drop(s) => self.drop_slot(slot(s)),
            Action::ModifyPast(s, v) => self.modify(slot(s), past(self.start, v), false),
        }
    }
}

// ---------------------------------------------------------------------------------
// The real thing.

/// A slot's timer: its id and handle.
type Handle = (u32, Arc<Timer>);

struct Shared {
    ctx: Arc<AioContext>,
    slots: Mutex<[Option<Handle>; SLOTS]>,
    fired: Mutex<Vec<u32>>,
    next_id: Mutex<u32>,
    start: i64,
}

impl Shared {
    fn handle(&self, s: usize) -> Option<Arc<Timer>> {
        self.slots.lock().unwrap()[s]
            .as_ref()
            .map(|(_, t)| Arc::clone(t))
    }

    fn new_timer(self: &Arc<Self>, actions: Vec<Action>) {
        let mut slots = self.slots.lock().unwrap();
        let Some(free) = slots.iter().position(Option::is_none) else {
            return;
        };
        let id = {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            *n - 1
        };
        let shared = Arc::clone(self);
        let timer = self.ctx.timer_new(ClockType::Realtime, move || {
            shared.fired.lock().unwrap().push(id);
            for &a in &actions {
                shared.action(a);
            }
        });
        slots[free] = Some((id, Arc::new(timer)));
    }

    fn drop_slot(&self, s: usize) {
        let gone = self.slots.lock().unwrap()[s].take();
        drop(gone);
    }

    fn action(&self, a: Action) {
        match a {
            Action::ModifyFar(s, v) => {
                if let Some(t) = self.handle(slot(s)) {
                    t.modify(far(self.start, v));
                }
            }
            Action::AnticipateFar(s, v) => {
                if let Some(t) = self.handle(slot(s)) {
                    t.modify_anticipate(far(self.start, v));
                }
            }
            Action::Delete(s) => {
                if let Some(t) = self.handle(slot(s)) {
                    t.delete();
                }
            }
            Action::Drop(s) => self.drop_slot(slot(s)),
            Action::ModifyPast(s, v) => {
                if let Some(t) = self.handle(slot(s)) {
                    t.modify(past(self.start, v));
                }
            }
        }
    }
}

thread_local! {
    /// One context per thread, reused across runs (a run leaves it empty).
    static CTX: Arc<AioContext> = AioContext::builder()
        .name("fuzz-timers")
        .build()
        .unwrap_or_else(|e| panic!("timers fuzz: cannot create an AioContext: {e}"));
}

fn now() -> i64 {
    ClockType::Realtime.now_ns()
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
/// When the real timers and the model disagree (the message names the step), or when
/// the run hangs for 20 s (the watchdog aborts).
pub fn run(ops: &[Op]) {
    let ctx = CTX.with(Arc::clone);
    while ctx.poll(false) {}
    let watchdog = aioctx_testkit::Watchdog::named("timers", Duration::from_secs(20));
    let start = now();
    let shared = Arc::new(Shared {
        ctx: Arc::clone(&ctx),
        slots: Mutex::new(Default::default()),
        fired: Mutex::new(Vec::new()),
        next_id: Mutex::new(0),
        start,
    });
    let mut model = Model {
        start,
        ..Model::default()
    };
    for (step, op) in ops.iter().enumerate() {
        watchdog.note(|s| *s = format!("step {step}: {op:?}"));
        let fail = |what: String| -> ! {
            panic!("timers: step {step} ({op:?}): {what}; ops: {ops:?}");
        };
        match *op {
            Op::New(ref actions) => {
                let actions: Vec<Action> = actions.iter().copied().take(MAX_ACTIONS).collect();
                shared.new_timer(actions.clone());
                if let Some(free) = model.slots.iter().position(Option::is_none) {
                    model.timers.push(MTimer {
                        expire: None,
                        actions,
                    });
                    model.slots[free] = Some(model.timers.len() as u32 - 1);
                }
            }
            Op::Modify(s, d) | Op::Anticipate(s, d) | Op::RemoteModify(s, d) => {
                let expire = d.at(now());
                if let Some(t) = shared.handle(slot(s)) {
                    match op {
                        Op::Modify(..) => t.modify(expire),
                        Op::Anticipate(..) => t.modify_anticipate(expire),
                        _ => crate::on_remote_thread(move || t.modify(expire)),
                    }
                }
                model.modify(slot(s), expire, matches!(op, Op::Anticipate(..)));
            }
            Op::Delete(s) => {
                if let Some(t) = shared.handle(slot(s)) {
                    t.delete();
                }
                model.delete(slot(s));
            }
            Op::Drop(s) => {
                shared.drop_slot(slot(s));
                model.drop_slot(slot(s));
            }
            Op::Advance(v) => {
                let until = now() + i64::from(v % 64) * 1000;
                while now() < until {
                    std::hint::spin_loop();
                }
            }
            Op::Poll | Op::PollBlocking => {
                model.armed_in_pass.clear(); // a new pass
                let t0 = now();
                let blocking =
                    matches!(op, Op::PollBlocking) && model.first().is_some_and(|(e, _)| e <= t0);
                let progress = ctx.poll(blocking);
                let t1 = now();
                let fired = std::mem::take(&mut *shared.fired.lock().unwrap());
                let mut last = i64::MIN;
                for &id in &fired {
                    match model.first() {
                        Some((e, first)) if first == id && e <= t1 => last = e,
                        other => fail(format!(
                            "timer {id} fired, but the model's next due timer is {other:?} \
                             (poll ended at {t1}); fired: {fired:?}"
                        )),
                    }
                    model.timers[id as usize].expire = None;
                    for a in model.timers[id as usize].actions.clone() {
                        model.action(a);
                    }
                }
                let rest = model.first().map_or(i64::MAX, |(e, _)| e);
                // Some now_poll in [t0, t1] with every fired deadline <= now_poll < rest.
                if last.max(t0) > t1.min(rest.saturating_sub(1)) {
                    fail(format!(
                        "no poll time in [{t0}, {t1}] explains it: last fired deadline {last}, \
                         next left {rest:?}; fired: {fired:?}"
                    ));
                }
                if progress == fired.is_empty() {
                    fail(format!(
                        "poll returned {progress} with {} timers fired",
                        fired.len()
                    ));
                }
                model.armed_in_pass.clear(); // due from the next poll on
            }
        }
        for s in 0..SLOTS {
            let real = shared.handle(s).map(|t| (t.pending(), t.expire_time()));
            let want = model.expire_time(s).map(|e| (e.is_some(), e));
            if real != want {
                fail(format!(
                    "slot {s}: (pending, expire_time) is {real:?}, the model says {want:?}"
                ));
            }
        }
    }
    for s in 0..SLOTS {
        shared.drop_slot(s);
    }
    while ctx.poll(false) {}
    drop(watchdog);
}
