//! loom models of the graph lock.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aioctx-graph --release --lib`.
//!
//! The models drive the real [`LockState`] with the real `aio_wait` protocol
//! (`aioctx_wait`'s `AioWait`, built on loom's atomics through its `loom-model` feature):
//! only the main loop's sleep is a model, a `loom::sync::Notify` standing in for "a BH
//! was scheduled on the main context" (like a pending BH, a notify that arrives before
//! the sleep is kept). loom reports a deadlock when the writer sleeps forever.
//!
//! loom cannot model `membarrier(2)`, the rare side of the asymmetric fences (an
//! inter-processor interrupt is outside its memory model): under loom, aioctx-wait's
//! `light_fence` ([R1], [U1]) and `heavy_fence` ([W1], the waiter's registration) are
//! both SeqCst fences — the symmetric protocol, which is what the membarrier guarantee
//! reduces to (aioctx-wait's `fence.rs`). The asymmetric mode itself runs in the
//! integration tests, `aioctx stress` and the fuzz target under
//! `AIOCTX_FENCES=asymmetric`.

use std::sync::Arc;
use std::task::{Wake, Waker};

use aioctx_wait::{ModelAioWait as AioWait, ModelEventLoop as EventLoop};
use loom::sync::Notify;
use loom::sync::atomic::{AtomicBool, Ordering};

use crate::state::{AioWaiter, LockState, ReaderCounter, UnlockKick};

/// The main loop's sleep.
#[derive(Clone, Copy)]
struct MainLoop(&'static Notify);

impl EventLoop for MainLoop {
    fn sleep(&self) {
        self.0.wait();
    }

    fn wake(&self) {
        self.0.notify();
    }
}

/// `aio_wait` as the lock uses it: the real protocol on the model's main loop.
struct ModelWait {
    wait: AioWait<MainLoop>,
    main: MainLoop,
    /// Whether `kick` has its leading fence; `false` is a mutation the model must catch
    /// (the protocol's own mutation `must_kick_without_fence`).
    kick_fence: bool,
}

impl AioWaiter for ModelWait {
    fn kick(&self) {
        if self.kick_fence {
            self.wait.kick(|| self.main.wake());
        } else if self.wait.must_kick_without_fence() {
            self.wait.wake_all(|| self.main.wake());
        }
    }

    fn wait_while(&self, cond: &mut dyn FnMut() -> bool) {
        self.wait.wait_while(&self.main, true, cond);
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
            wait: AioWait::new(),
            main: MainLoop(Box::leak(Box::new(Notify::new()))),
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
    // [GL5] (`state.rs`): a reader between its increment and its back-off is not a read lock held.
    assert_eq!(w.lock.readers(), 0, "readers() under the write lock");
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
/// holds, `readers()` is 0 while the write lock is held (also when the reader is
/// backing off), and everyone finishes.
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

/// A read guard dropped on a thread that runs no context while the writer waits for
/// it: the decrement goes to the orphaned sum, and its kick still wakes the writer.
#[test]
fn orphaned_unlock_during_wrlock_wakes_the_writer() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let w = world(UnlockKick::Always);
        let c = counter(w);
        assert!(w.lock.try_rdlock(c, &w.wait, Waker::noop()));
        let reader = loom::thread::spawn(move || w.lock.rdunlock_orphaned(&w.wait));
        write_once(w);
        reader.join().unwrap();
        assert_eq!(w.lock.readers(), 0);
    });
}
