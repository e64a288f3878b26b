//! The reader tasks of the graph-lock model: each obeys the commands the run sends
//! through its mailbox and shows its state after each one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use aioctx_aio::{reschedule_to, yield_now};
use aioctx_graph::{ReadGuard, graph_lock};
use aioctx_wait::kick;

use super::{TaskState, contexts};

#[derive(Debug, Clone, Copy)]
pub(super) enum Cmd {
    Lock,
    Unlock,
    UnlockAll,
    Move(usize),
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

pub(super) async fn reader(mb: Arc<Mailbox>, mut ctx: usize) {
    let mut guards: Vec<ReadGuard<'static>> = Vec::new();
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
                guards.push(g);
            }
            Cmd::Unlock => drop(guards.pop()),
            Cmd::UnlockAll => guards.clear(),
            Cmd::Move(c) => {
                reschedule_to(&contexts()[c]).await;
                ctx = c;
            }
            Cmd::Yield => yield_now().await,
            Cmd::GiveAway => *mb.given.lock().unwrap() = guards.pop(),
            Cmd::Exit => {
                guards.clear();
                mb.show(|s| {
                    s.processed += 1;
                    s.state = None;
                    s.done = true;
                });
                return;
            }
        }
        let held = guards.len() as u32;
        mb.show(|s| {
            s.processed += 1;
            s.state = Some(TaskState {
                held,
                blocked: false,
                ctx,
            });
        });
    }
}
