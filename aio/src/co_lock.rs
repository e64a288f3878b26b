//! Async locking for tasks: a wait queue and a fair mutex (QEMU:
//! util/qemu-coroutine-lock.c, `CoQueue` and `CoMutex`).
//!
//! Both keep their waiters in a FIFO under a short internal lock. A waiter is a small
//! shared node (`Waiter`): a `woken` flag and the waker to call. The rules:
//!
//! [CL1] A waker is stored under the node's lock *before* the waiter re-checks `woken`;
//!    a waker sets `woken` before it takes the stored waker under the same lock. So a
//!    wake is never lost between "not woken yet" and "parked".
//! [CL2] `CoMutex` hands off: `unlock` with waiters pops the first one and gives it the
//!    lock (the mutex never becomes free in between), so no locker can barge in ahead
//!    of a waiter — first come, first served, across contexts. The popped waiter is
//!    woken through its task's waker, which queues the task on its own context.
//! [CL3] A waiter dropped before it observed its wake passes the wake on: a `CoMutex`
//!    lock future that was handed the lock unlocks it (to the next waiter); a `CoQueue`
//!    wait that was woken wakes the next waiter. Cancellation never loses a wake.
//! [CL4] A waker pops a waiter and sets its `woken` in the same critical section of the
//!    queue's lock; only then, outside the lock, does it call the stored waker. So a
//!    waiter dropped concurrently either removes itself from the queue first (and the
//!    wake goes to the next waiter) or finds itself gone *and* `woken`, and passes the
//!    wake on ([CL3]): there is no moment when it is gone but not yet woken.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Mutex, lock};

/// One parked task ([CL1]).
pub(crate) struct Waiter {
    woken: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Waiter {
    fn new(waker: &Waker) -> Arc<Self> {
        Arc::new(Self {
            woken: AtomicBool::new(false),
            waker: Mutex::new(Some(waker.clone())),
        })
    }

    fn is_woken(&self) -> bool {
        // Acquire: pairs with the Release store in `wake`, so what the waker published
        // (the handed-off lock's data) is visible.
        self.woken.load(Ordering::Acquire)
    }

    /// Sets `woken` ([CL1]); the caller holds the lock of the queue it popped this
    /// waiter from ([CL4]) and calls [`fire`](Self::fire) after releasing it.
    pub(crate) fn mark_woken(&self) {
        // Release: pairs with the Acquire load in `is_woken`.
        self.woken.store(true, Ordering::Release);
    }

    /// Calls the stored waker, after [`mark_woken`](Self::mark_woken) ([CL1]).
    pub(crate) fn fire(&self) {
        let waker = lock(&self.waker).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Stores the current waker, then re-checks `woken` ([CL1]).
    fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_woken() {
            return Poll::Ready(());
        }
        {
            let mut slot = lock(&self.waker);
            match &mut *slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        if self.is_woken() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

fn remove(queue: &mut VecDeque<Arc<Waiter>>, w: &Arc<Waiter>) -> bool {
    match queue.iter().position(|x| Arc::ptr_eq(x, w)) {
        Some(i) => {
            queue.remove(i);
            true
        }
        None => false,
    }
}

/// A queue of waiting tasks (QEMU: `CoQueue`). Waits may end spuriously (a wake that
/// a cancelled waiter passed on): re-check the condition in a loop, as QEMU code does
/// with `while (!cond) qemu_co_queue_wait(...)`.
///
/// ```
/// use std::sync::Arc;
/// use aioctx_aio::{AioContext, CoMutex, CoQueue};
/// let ctx = AioContext::new()?;
/// let state = Arc::new((CoMutex::new(false), CoQueue::new()));
/// let s = Arc::clone(&state);
/// let waiter = ctx.spawn(async move {
///     let (ready, queue) = &*s;
///     let mut guard = ready.lock().await;
///     while !*guard {
///         guard = queue.wait(guard).await; // unlocks while waiting, relocks after
///     }
/// });
/// ctx.block_on(async {
///     let (ready, queue) = &*state;
///     *ready.lock().await = true;
///     queue.wake_all();
///     waiter.await.unwrap();
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct CoQueue {
    pub(crate) waiters: Mutex<VecDeque<Arc<Waiter>>>,
}

impl CoQueue {
    /// An empty queue (QEMU: `qemu_co_queue_init`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the caller, releases `guard`, waits for a wake, then locks the mutex
    /// again and returns the new guard (QEMU: `qemu_co_queue_wait(queue, lock)`). The
    /// caller is on the queue before the lock is released, so a waker that changes the
    /// condition under the lock and then wakes cannot be missed.
    pub async fn wait<'a, T: ?Sized>(&self, guard: CoMutexGuard<'a, T>) -> CoMutexGuard<'a, T> {
        let mutex = guard.mutex;
        let waiter = std::future::poll_fn(|cx| Poll::Ready(Waiter::new(cx.waker()))).await;
        let wait = WaitWoken {
            queue: self,
            waiter: Some(Arc::clone(&waiter)),
        };
        lock(&self.waiters).push_back(waiter);
        drop(guard);
        wait.await;
        mutex.lock().await
    }

    /// Waits for a wake without a lock (QEMU: `qemu_co_queue_wait(queue, NULL)`): the
    /// caller is registered when the returned future is first polled, so the condition
    /// must be checked and the wait started without another task's wake in between —
    /// true within one context, where tasks do not preempt each other.
    pub fn wait_unlocked(&self) -> impl Future<Output = ()> + '_ {
        WaitWoken {
            queue: self,
            waiter: None,
        }
    }

    /// Wakes the first waiter; returns whether there was one (QEMU:
    /// `qemu_co_queue_next`).
    pub fn wake_one(&self) -> bool {
        let w = {
            let mut waiters = lock(&self.waiters);
            let w = waiters.pop_front();
            if let Some(w) = &w {
                w.mark_woken(); // [CL4]: before the lock is released
            }
            w
        };
        match w {
            Some(w) => {
                w.fire();
                true
            }
            None => false,
        }
    }

    /// Wakes every waiter (QEMU: `qemu_co_queue_restart_all`).
    pub fn wake_all(&self) {
        let all = {
            let mut waiters = lock(&self.waiters);
            for w in waiters.iter() {
                w.mark_woken(); // [CL4]
            }
            std::mem::take(&mut *waiters)
        };
        for w in all {
            w.fire();
        }
    }

    /// Whether no task waits (QEMU: `qemu_co_queue_empty`).
    pub fn is_empty(&self) -> bool {
        lock(&self.waiters).is_empty()
    }
}

impl fmt::Debug for CoQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoQueue")
            .field("waiters", &lock(&self.waiters).len())
            .finish()
    }
}

/// A wait on a [`CoQueue`]; [CL3] on drop.
struct WaitWoken<'q> {
    queue: &'q CoQueue,
    waiter: Option<Arc<Waiter>>,
}

impl Future for WaitWoken<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.waiter {
            Some(w) => {
                let ready = w.poll_woken(cx);
                if ready.is_ready() {
                    self.waiter = None;
                }
                ready
            }
            None => {
                let w = Waiter::new(cx.waker());
                lock(&self.queue.waiters).push_back(Arc::clone(&w));
                self.waiter = Some(w);
                Poll::Pending
            }
        }
    }
}

impl Drop for WaitWoken<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            let removed = remove(&mut lock(&self.queue.waiters), &w);
            // Not on the queue any more: a waker popped it, and ([CL4]) set `woken`
            // before releasing the lock our `remove` then took.
            if !removed && w.is_woken() {
                self.queue.wake_one();
            }
        }
    }
}

/// The lock state of a [`CoMutex`].
#[derive(Default)]
struct LockState {
    locked: bool,
    /// Non-empty only while `locked` ([CL2]).
    waiters: VecDeque<Arc<Waiter>>,
}

/// A fair mutex for tasks (QEMU: `CoMutex`): `lock().await` parks the task instead of
/// blocking the thread, waiters get the lock in arrival order, and `unlock` hands it to
/// the first waiter directly, on whichever context that waiter runs. The guard may be
/// held across `.await` and dropped on another thread (after [`reschedule_to`]).
///
/// [`reschedule_to`]: crate::reschedule_to
///
/// ```
/// use std::sync::Arc;
/// use aioctx_aio::{AioContext, CoMutex};
/// let ctx = AioContext::new()?;
/// let m = Arc::new(CoMutex::new(0u32));
/// let handles: Vec<_> = (0..4)
///     .map(|_| {
///         let m = Arc::clone(&m);
///         ctx.spawn(async move {
///             for _ in 0..10 {
///                 let mut g = m.lock().await;
///                 let v = *g;
///                 aioctx_aio::yield_now().await; // other tasks run; they wait for the lock
///                 *g = v + 1;
///             }
///         })
///     })
///     .collect();
/// ctx.block_on(async { for h in handles { h.await.unwrap() } });
/// assert_eq!(*ctx.block_on(m.lock()), 40);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct CoMutex<T: ?Sized> {
    state: Mutex<LockState>,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, and a guard exists only while the
// mutex is held ([CL2]), so at most one thread reaches it at a time; moving `T`
// between threads needs `T: Send`.
unsafe impl<T: ?Sized + Send> Send for CoMutex<T> {}
// SAFETY: as above; `&CoMutex<T>` gives `&mut T` to one holder at a time.
unsafe impl<T: ?Sized + Send> Sync for CoMutex<T> {}

impl<T> CoMutex<T> {
    /// An unlocked mutex holding `value` (QEMU: `qemu_co_mutex_init`).
    pub fn new(value: T) -> Self {
        Self {
            state: Mutex::new(LockState::default()),
            data: UnsafeCell::new(value),
        }
    }

    /// The protected value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> CoMutex<T> {
    /// Locks the mutex, waiting in FIFO order behind earlier lockers (QEMU:
    /// `qemu_co_mutex_lock`). Dropping the future while it waits leaves the queue; if
    /// the lock was already handed to it, it is handed on (\[CL3\]).
    pub fn lock(&self) -> Lock<'_, T> {
        Lock {
            mutex: self,
            waiter: None,
        }
    }

    /// Takes the lock if it is free and nobody waits.
    pub fn try_lock(&self) -> Option<CoMutexGuard<'_, T>> {
        let mut st = lock(&self.state);
        if st.locked {
            return None;
        }
        st.locked = true;
        Some(CoMutexGuard { mutex: self })
    }

    /// Whether the mutex is held.
    pub fn is_locked(&self) -> bool {
        lock(&self.state).locked
    }

    /// The protected value, reached through `&mut` (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Releases the lock: hands it to the first waiter, or frees it ([CL2]; QEMU:
    /// `qemu_co_mutex_unlock`).
    fn unlock(&self) {
        let next = {
            let mut st = lock(&self.state);
            debug_assert!(st.locked, "CoMutex unlocked while not locked");
            let next = st.waiters.pop_front();
            match &next {
                Some(w) => w.mark_woken(), // [CL4]
                None => st.locked = false,
            }
            next
        };
        if let Some(w) = next {
            w.fire();
        }
    }
}

impl<T: Default> Default for CoMutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized> fmt::Debug for CoMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("CoMutex")
            .field("locked", &st.locked)
            .field("waiters", &st.waiters.len())
            .finish_non_exhaustive()
    }
}

/// The future of [`CoMutex::lock`].
#[must_use = "futures do nothing unless awaited"]
pub struct Lock<'a, T: ?Sized> {
    mutex: &'a CoMutex<T>,
    waiter: Option<Arc<Waiter>>,
}

impl<'a, T: ?Sized> Future for Lock<'a, T> {
    type Output = CoMutexGuard<'a, T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CoMutexGuard<'a, T>> {
        let mutex = self.mutex;
        match &self.waiter {
            Some(w) => {
                if w.poll_woken(cx).is_pending() {
                    return Poll::Pending;
                }
                // The lock was handed to us ([CL2]).
                self.waiter = None;
            }
            None => {
                let mut st = lock(&mutex.state);
                if st.locked {
                    let w = Waiter::new(cx.waker());
                    st.waiters.push_back(Arc::clone(&w));
                    drop(st);
                    self.waiter = Some(w);
                    return Poll::Pending;
                }
                st.locked = true;
            }
        }
        Poll::Ready(CoMutexGuard { mutex })
    }
}

impl<T: ?Sized> Drop for Lock<'_, T> {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            let removed = remove(&mut lock(&self.mutex.state).waiters, &w);
            if !removed {
                // Popped by `unlock`: the lock is ours; pass it on ([CL3]).
                self.mutex.unlock();
            }
        }
    }
}

impl<T: ?Sized> fmt::Debug for Lock<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("queued", &self.waiter.is_some())
            .finish()
    }
}

/// Proof of holding a [`CoMutex`]; dropping it unlocks (QEMU: `qemu_co_mutex_unlock`).
pub struct CoMutexGuard<'a, T: ?Sized> {
    mutex: &'a CoMutex<T>,
}

// SAFETY: sharing the guard shares `&T`, which needs `T: Sync`.
unsafe impl<T: ?Sized + Sync> Sync for CoMutexGuard<'_, T> {}

impl<T: ?Sized> Deref for CoMutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the mutex is held by its owner ([CL2]).
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> DerefMut for CoMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized> Drop for CoMutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

static_assertions::assert_impl_all!(CoMutex<u32>: Send, Sync);
static_assertions::assert_impl_all!(CoMutexGuard<'static, u32>: Send, Sync);
static_assertions::assert_impl_all!(CoQueue: Send, Sync);
