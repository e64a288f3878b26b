//! The worker pool that runs file I/O for contexts on the epoll back end (QEMU:
//! util/thread-pool.c, `thread_pool_submit_aio`).
//!
//! One process-wide pool: up to [`MAX_WORKERS`] threads, started on demand and leaving
//! after [`IDLE_EXIT`] without work, take jobs off one FIFO queue. A job runs a blocking
//! syscall on buffers it owns, then hands the result to its context as a oneshot bottom
//! half (see `io.rs`), so the completion runs on the home thread like a CQE would.
//!
//! The pool serves regular files and block devices only: their syscalls finish on their
//! own. Descriptors that can block indefinitely (pipes, sockets, ttys — anything
//! `poll`-able) never reach it; the loop drives them by readiness (`io/stream.rs`), so
//! no number of pending stream reads can take the pool's threads from file I/O or
//! from cancellation.
//!
//! Rules:
//! [PL1] A job owns everything its syscall touches (buffers, iovecs) from submission until
//!    it is dropped; the pool drops a job only after its syscall returned or without
//!    having started it. Nothing the kernel reads or writes is ever freed under a worker,
//!    whatever happens to the future or the context.
//! [PL2] Each context has an [`Owner`]: a count of its jobs queued or running. Dropping
//!    the context cancels: it takes its queued jobs off the queue and drops them (their
//!    operations complete with `ECANCELED`: nothing ran), then waits (bounded) until
//!    the count is zero. A running syscall finishes
//!    (file syscalls are not interruptible, and do not block indefinitely), and its
//!    operation reports the syscall's real result (`io/stream.rs`).
//! [PL3] The pool is not part of any loom model: it uses `std` primitives directly.
//! [PL4] What a worker runs for a typed operation is the op's own blocking lowering
//!    (`OpCode::run_blocking`, one per file in `op/`): `preadv2`/`pwritev2` at the
//!    offset, `fsync`/`fdatasync`, `openat`, `statx`, … The pool itself only runs
//!    closures: it imports nothing from the crate.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// Locks `m`, ignoring poisoning: jobs run outside every lock of this module.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The most worker threads the pool runs (QEMU's default `thread-pool-max`).
pub(crate) const MAX_WORKERS: usize = 64;

/// How long an idle worker waits for a job before it exits (as QEMU's workers do).
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A context's share of the pool ([PL2]).
pub(crate) struct Owner {
    outstanding: Mutex<usize>,
    done: Condvar,
}

impl Owner {
    /// A new owner.
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        Ok(Self::fresh())
    }

    /// A new owner (infallible form of [`new`](Self::new)).
    pub(crate) fn fresh() -> Arc<Self> {
        Arc::new(Self {
            outstanding: Mutex::new(0),
            done: Condvar::new(),
        })
    }

    fn finish(&self, n: usize) {
        let mut out = lock(&self.outstanding);
        *out -= n;
        if *out == 0 {
            self.done.notify_all();
        }
    }

    /// Cancels this owner's jobs and waits up to `limit` for the running ones ([PL2]);
    /// returns how many were still running at the deadline.
    pub(crate) fn cancel(self: &Arc<Self>, limit: Duration) -> usize {
        let queued: VecDeque<Job> = {
            let mut st = lock(&pool().state);
            let (mine, rest) = st
                .queue
                .drain(..)
                .partition(|j| Arc::ptr_eq(&j.owner, self));
            st.queue = rest;
            mine
        };
        let n = queued.len();
        drop(queued); // [PL1]: never started, so dropping frees nothing in use
        if n > 0 {
            self.finish(n);
        }
        let out = lock(&self.outstanding);
        let (out, _) = self
            .done
            .wait_timeout_while(out, limit, |n| *n > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *out
    }
}

/// One unit of work: runs on a worker with its owner at hand.
struct Job {
    owner: Arc<Owner>,
    work: Box<dyn FnOnce(&Owner) + Send>,
}

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            threads: 0,
            idle: 0,
        }),
        work: Condvar::new(),
    })
}

/// Queues `work` for `owner` (QEMU: `thread_pool_submit`). `work` runs on a worker
/// thread, or is dropped unstarted if the owner cancels first.
///
/// # Errors
/// The pool has no worker and a new one could not be started; `work` is dropped.
pub(crate) fn submit(owner: &Arc<Owner>, work: Box<dyn FnOnce(&Owner) + Send>) -> io::Result<()> {
    *lock(&owner.outstanding) += 1;
    let p = pool();
    let mut st = lock(&p.state);
    st.queue.push_back(Job {
        owner: Arc::clone(owner),
        work,
    });
    // Enough sleeping workers for every queued job (a notified worker counts as idle
    // until it wakes), or no room for another: wake one.
    if st.idle >= st.queue.len() || st.threads >= MAX_WORKERS {
        drop(st);
        p.work.notify_one();
        return Ok(());
    }
    st.threads += 1;
    let spawned = std::thread::Builder::new()
        .name("aio-worker".to_owned())
        .spawn(worker);
    if let Err(e) = spawned {
        st.threads -= 1;
        if st.threads == 0 {
            let job = st.queue.pop_back().expect("just pushed");
            drop(st);
            drop(job);
            owner.finish(1);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start an I/O worker thread: {e}"),
            ));
        }
        log::warn!("worker pool: cannot start another worker ({e}); the others will run the job");
    }
    Ok(())
}

fn worker() {
    let p = pool();
    let mut st = lock(&p.state);
    loop {
        let Some(job) = st.queue.pop_front() else {
            st.idle += 1;
            let (guard, timeout) = p
                .work
                .wait_timeout(st, IDLE_EXIT)
                .unwrap_or_else(PoisonError::into_inner);
            st = guard;
            st.idle -= 1;
            if timeout.timed_out() && st.queue.is_empty() {
                st.threads -= 1;
                return;
            }
            continue;
        };
        drop(st);
        let owner = Arc::clone(&job.owner);
        // A panicking job (a bug) must not shrink the pool or leave the count up.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.work)(&owner)));
        owner.finish(1);
        if let Err(panic) = res {
            log::error!(
                "worker pool: a job panicked: {}",
                panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("<non-string panic>")
            );
        }
        st = lock(&p.state);
    }
}
