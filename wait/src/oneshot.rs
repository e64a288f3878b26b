//! `bh_oneshot`: run a closure on another context's thread and wait for its result from
//! the main loop (QEMU: `aio_wait_bh_oneshot`, util/aio-wait.c).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use aioctx_aio::AioContext;

use crate::sync::atomic::{AtomicBool, Ordering};

/// Where the closure's outcome travels from the BH back to the waiter.
struct Slot<R> {
    done: AtomicBool,
    result: Mutex<Option<std::thread::Result<R>>>,
}

impl<R> Slot<R> {
    fn finish(&self, result: std::thread::Result<R>) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        // Release: pairs with the Acquire load in `bh_oneshot`'s condition, so the
        // result stored above is visible once `done` is.
        self.done.store(true, Ordering::Release);
        // The rule of `kick`: the condition changed, so kick after the change.
        crate::kick();
    }
}

/// The closure and its slot. Dropped without running (the context went away with the
/// BH still pending), it reports that instead of leaving the waiter asleep forever.
struct Job<F, R> {
    f: Option<F>,
    slot: Arc<Slot<R>>,
    ctx_name: String,
}

impl<F: FnOnce() -> R, R> Job<F, R> {
    fn run(mut self) {
        let f = self.f.take().expect("a bh_oneshot job runs once");
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        self.slot.finish(result);
    }
}

impl<F, R> Drop for Job<F, R> {
    fn drop(&mut self) {
        if self.f.take().is_some() {
            let msg = format!(
                "bh_oneshot: the context `{}` was dropped before the closure ran",
                self.ctx_name
            );
            self.slot.finish(Err(Box::new(msg) as Box<dyn Any + Send>));
        }
    }
}

/// Runs `f` on `ctx`'s home thread, in a bottom half, and returns its value; the main
/// loop keeps running while it waits (QEMU: `aio_wait_bh_oneshot`).
///
/// Must be called from the main loop's thread: the wait is a [`wait_while`] on the main
/// loop, kicked by the bottom half once `f` returned. `ctx` may be the main context
/// itself; then `f` runs in the wait's own `poll`.
///
/// ```
/// let io = aioctx_aio::IoThread::new("io1")?;
/// assert_eq!(aioctx_wait::bh_oneshot(io.ctx(), || 6 * 7), 42);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
/// If `f` panics, the panic is caught on `ctx`'s thread (which goes on running its loop)
/// and resumed here with the same payload. Also panics when called on an iothread (see
/// [`wait_while`]), or when `ctx` is dropped before `f` ran.
///
/// [`wait_while`]: crate::wait_while
pub fn bh_oneshot<R: Send + 'static>(
    ctx: &AioContext,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    // Check before scheduling, so that a misuse panics without leaving `f` behind.
    crate::loop_to_poll(None, "bh_oneshot");
    let slot = Arc::new(Slot {
        done: AtomicBool::new(false),
        result: Mutex::new(None),
    });
    let job = Job {
        f: Some(f),
        slot: Arc::clone(&slot),
        ctx_name: ctx.name().to_owned(),
    };
    ctx.schedule_oneshot(move || job.run());
    // Acquire: pairs with the Release store in `Slot::finish`.
    crate::wait_while(None, || !slot.done.load(Ordering::Acquire));
    let result = slot
        .result
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("bh_oneshot: done is set only after the result is stored");
    match result {
        Ok(value) => value,
        Err(payload) => panic::resume_unwind(payload),
    }
}
