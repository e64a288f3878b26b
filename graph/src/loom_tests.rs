//! loom models of the graph lock (DESIGN §8–§9, issue "graph lock" must-show 3).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-graph --release --lib`.
//!
//! The models drive the real [`LockState`] with a model of `aio_wait`: `num_waiters`, the
//! SeqCst fences of `kick` and `wait_while`, and a `loom::sync::Notify` standing in for
//! "a BH was scheduled on the main context" (like a pending BH, a notify that arrives
//! before the sleep is kept). loom reports a deadlock when the writer sleeps forever.

use std::sync::Arc;
use std::task::{Wake, Waker};

use loom::sync::Notify;
use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};

use crate::state::{AioWaiter, LockState, ReaderCounter, UnlockKick};

/// `aio_wait`, modelled: QEMU's util/aio-wait.c with the main loop's sleep as a Notify.
struct ModelWait {
    num_waiters: AtomicU32,
    main_loop: Notify,
    /// Whether `kick` has its leading fence; `false` is a mutation the model must catch.
    kick_fence: bool,
}

impl AioWaiter for ModelWait {
    fn kick(&self) {
        if self.kick_fence {
            // [K1] (= the graph lock's [U1]) pairs with the fence after
            // `num_waiters += 1` below.
            fence(Ordering::SeqCst);
        }
        if self.num_waiters.load(Ordering::Relaxed) > 0 {
            self.main_loop.notify();
        }
    }

    fn wait_while(&self, cond: &mut dyn FnMut() -> bool) {
        self.num_waiters.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `kick` (and [U1] before it).
        fence(Ordering::SeqCst);
        while cond() {
            self.main_loop.wait();
        }
        self.num_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

struct World {
    lock: LockState,
    wait: ModelWait,
    reading: AtomicBool,
    writing: AtomicBool,
}

fn world(policy: UnlockKick) -> &'static World {
    world_with(policy, true)
}

fn world_with(policy: UnlockKick, kick_fence: bool) -> &'static World {
    // Leaked, not `Arc`: a drop while unwinding from loom's deadlock panic would abort.
    let w = Box::leak(Box::new(World {
        lock: LockState::new(),
        wait: ModelWait {
            num_waiters: AtomicU32::new(0),
            main_loop: Notify::new(),
            kick_fence,
        },
        reading: AtomicBool::new(false),
        writing: AtomicBool::new(false),
    }));
    w.lock.set_unlock_kick(policy);
    w
}

struct ThreadWaker(Notify);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify();
    }
}

/// A reader on its own context: `rdlock` (sleeping on the queue when backed off), a
/// critical section that checks no writer is inside, `rdunlock`.
fn read_once(w: &'static World, counter: &ReaderCounter) {
    let parked = Arc::new(ThreadWaker(Notify::new()));
    let waker = Waker::from(Arc::clone(&parked));
    while !w.lock.try_rdlock(counter, &w.wait, &waker) {
        parked.0.wait();
    }
    w.reading.store(true, Ordering::SeqCst);
    assert!(
        !w.writing.load(Ordering::SeqCst),
        "reader and writer at once"
    );
    w.reading.store(false, Ordering::SeqCst);
    w.lock.rdunlock(counter, &w.wait);
}

/// The writer on the main loop: `wrlock`, a critical section, `wrunlock`.
fn write_once(w: &'static World) {
    w.lock.wrlock(&w.wait);
    w.writing.store(true, Ordering::SeqCst);
    // (`readers()` may read 1 here: a reader that saw `has_writer` is between its
    // increment and its back-off. Exclusion is what matters, checked by the flags.)
    assert!(
        !w.reading.load(Ordering::SeqCst),
        "reader and writer at once"
    );
    w.writing.store(false, Ordering::SeqCst);
    for waker in w.lock.wrunlock() {
        waker.wake();
    }
}

/// A reader's counter, registered like a context's, leaked for the same reason as the
/// world.
fn counter(w: &'static World) -> &'static ReaderCounter {
    let c: &'static Arc<ReaderCounter> = Box::leak(Box::new(Arc::new(ReaderCounter::new())));
    w.lock.register(Arc::clone(c));
    c
}

/// The seed commit's interleaving: a reader already holds the lock on an iothread and
/// drops it while the writer waits for it.
fn held_reader_unlocks_during_wrlock(policy: UnlockKick, kick_fence: bool) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let w = world_with(policy, kick_fence);
        let c = counter(w);
        // The reader took its lock before the model starts.
        assert!(w.lock.try_rdlock(c, &w.wait, Waker::noop()));
        let reader = loom::thread::spawn(move || w.lock.rdunlock(c, &w.wait));
        write_once(w);
        reader.join().unwrap();
    });
}

/// A reader locking and unlocking while the writer locks and unlocks: mutual exclusion
/// holds, and everyone finishes.
fn reader_races_writer(policy: UnlockKick) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let w = world(policy);
        let c = counter(w);
        let reader = loom::thread::spawn(move || read_once(w, c));
        write_once(w);
        reader.join().unwrap();
        assert_eq!(w.lock.readers(), 0);
    });
}

#[test]
fn always_kick_reader_races_writer() {
    reader_races_writer(UnlockKick::Always);
}

#[test]
fn always_kick_writer_gets_lock_from_held_reader() {
    held_reader_unlocks_during_wrlock(UnlockKick::Always, true);
}

/// rdunlock relies on the kick's own fence as its [U1]: without it, even always-kick
/// loses the wake-up. Shows the model would catch a weakened fence.
#[test]
#[should_panic(expected = "deadlock")]
fn always_kick_without_the_kick_fence_deadlocks() {
    held_reader_unlocks_during_wrlock(UnlockKick::Always, false);
}

#[test]
#[should_panic(expected = "deadlock")]
fn when_writer_seen_loses_the_wakeup_e3082ab3b3() {
    held_reader_unlocks_during_wrlock(UnlockKick::WhenWriterSeen, true);
}

#[test]
#[should_panic(expected = "deadlock")]
fn when_writer_seen_reader_races_writer_deadlocks() {
    reader_races_writer(UnlockKick::WhenWriterSeen);
}
