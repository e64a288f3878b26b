//! The reader tasks of the graph-lock model: each obeys the commands the run sends
//! through its mailbox and shows its state after each one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use aioctx_aio::{AioContext, reschedule_to, yield_now};
use aioctx_graph::{ReadGuard, graph_lock};
use aioctx_wait::kick;

use super::TaskState;

#[derive(Debug, Clone)]
pub(super) enum Cmd {
    Lock,
    Unlock,
    UnlockAll,
    /// Move to this context, whose index in the model is the `usize`.
    Move(usize, Arc<AioContext>),
    Yield,
    Exit,
    GiveAway,
}

#[derive(Debug, Default)]
pub(super) struct Shown {
    /// Commands fully acted on.
    pub(super) processed: u64,
    pub(super) state: Option<TaskState>,
    pub(super) done: bool,
    /// The task's future was dropped before it ended (its context shut down): its read
    /// guards were dropped first.
    pub(super) cancelled: bool,
}

#[derive(Default)]
pub(super) struct Mailbox {
    pub(super) cmds: Mutex<(VecDeque<Cmd>, Option<Waker>)>,
    pub(super) shown: Mutex<Shown>,
    pub(super) sent: Mutex<u64>,
    /// A read guard the task gave away (`Cmd::GiveAway`), for the run to drop.
    pub(super) given: Mutex<Option<ReadGuard<'static>>>,
}

impl Mailbox {
    pub(super) fn send(&self, cmd: Cmd) {
        *self.sent.lock().unwrap() += 1;
        let waker = {
            let mut c = self.cmds.lock().unwrap();
            c.0.push_back(cmd);
            c.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Publishes the task's state and wakes the run's `wait_while` — except while the
    /// writer waits in `wrlock`: then the only wake-ups it may get are the lock's own
    /// (`rdunlock`'s kick), or a lost one would go unnoticed.
    fn show(&self, f: impl FnOnce(&mut Shown)) {
        f(&mut self.shown.lock().unwrap());
        // SeqCst: if this load still sees `true`, the main loop's store of `false`
        // follows it, so the main loop's next look at `shown` (after that store) sees
        // the update above without a kick.
        if !IN_WRLOCK.load(Ordering::SeqCst) {
            kick();
        }
    }
}

struct NextCmd<'a>(&'a Mailbox);

impl Future for NextCmd<'_> {
    type Output = Cmd;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cmd> {
        let mut c = self.0.cmds.lock().unwrap();
        match c.0.pop_front() {
            Some(cmd) => Poll::Ready(cmd),
            None => {
                c.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Polls `rdlock()`, showing "blocked" while it is pending.
struct Observed<'a, F> {
    fut: Pin<Box<F>>,
    mb: &'a Mailbox,
}

impl<F: Future> Future for Observed<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(v),
            Poll::Pending => {
                self.mb.show(|s| {
                    if let Some(st) = &mut s.state {
                        st.blocked = true;
                    }
                });
                Poll::Pending
            }
        }
    }
}

/// Set by the main loop while it holds the write lock.
pub(super) static WRITER_ACTIVE: AtomicBool = AtomicBool::new(false);
/// Set by the main loop while it waits in `wrlock` (see `Mailbox::show`).
pub(super) static IN_WRLOCK: AtomicBool = AtomicBool::new(false);
/// Read locks acquired while the writer held the lock.
pub(super) static VIOLATIONS: AtomicU32 = AtomicU32::new(0);

/// The task's read guards, which it drops before saying it was cancelled when its
/// future is dropped unfinished (its context shut down): wherever that happens, with
/// no context current.
struct Held {
    mb: Arc<Mailbox>,
    guards: Vec<ReadGuard<'static>>,
    ended: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.guards.clear();
        if !self.ended {
            self.mb.show(|s| {
                s.state = None;
                s.cancelled = true;
            });
        }
    }
}

/// The reader task's future. `Held` is made outside it, so that the future says it was
/// cancelled also when it is dropped before its first poll.
pub(super) fn reader(mb: Arc<Mailbox>, ctx: usize) -> impl Future<Output = ()> + Send {
    let held = Held {
        mb: Arc::clone(&mb),
        guards: Vec::new(),
        ended: false,
    };
    obey(mb, ctx, held)
}

async fn obey(mb: Arc<Mailbox>, mut ctx: usize, mut held: Held) {
    loop {
        let cmd = NextCmd(&mb).await;
        match cmd {
            Cmd::Lock => {
                let g = Observed {
                    fut: Box::pin(graph_lock().rdlock()),
                    mb: &mb,
                }
                .await;
                if WRITER_ACTIVE.load(Ordering::SeqCst) {
                    VIOLATIONS.fetch_add(1, Ordering::SeqCst);
                }
                held.guards.push(g);
            }
            Cmd::Unlock => drop(held.guards.pop()),
            Cmd::UnlockAll => held.guards.clear(),
            Cmd::Move(c, target) => {
                reschedule_to(&target).await;
                ctx = c;
            }
            Cmd::Yield => yield_now().await,
            Cmd::GiveAway => *mb.given.lock().unwrap() = held.guards.pop(),
            Cmd::Exit => {
                held.guards.clear();
                held.ended = true;
                mb.show(|s| {
                    s.processed += 1;
                    s.state = None;
                    s.done = true;
                });
                return;
            }
        }
        let count = held.guards.len() as u32;
        mb.show(|s| {
            s.processed += 1;
            s.state = Some(TaskState {
                held: count,
                blocked: false,
                ctx,
            });
        });
    }
}
