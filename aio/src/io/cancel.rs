//! Dropping an I/O future ([IO2] and [IO6] (`io.rs`)): the state a future shares with its
//! operation, the handshake by which exactly one of the drop and the home thread that
//! hands the operation to its back end issues the cancel, and the cancel itself.

use std::sync::Weak;
use std::task::Waker;

use crate::context::AioContext;
use crate::sync::{Mutex, lock};

/// What the future and its operation share: the slot through which the callback hands
/// the buffer back ([IO2]), and the operation's name in its back end, which a dropped
/// future cancels by ([IO6]).
pub(super) struct Shared<T> {
    pub(super) slot: Slot<T>,
    /// io_uring: the operation's generation-tagged `user_data` (never in the loop's
    /// reserved tag space); epoll: the stream table entry it waits in. `None` until the
    /// home thread handed it to the back end.
    pub(super) id: Option<u64>,
    /// The operation's deadline passed and its cancel was asked for (`io/deadline.rs`):
    /// like a dropped future, it is not started or resubmitted, but its result is
    /// still delivered.
    pub(super) cancel_requested: bool,
    /// The kernel enforces the deadline (a `LINK_TIMEOUT` was linked behind it): the
    /// timer leaves it alone.
    pub(super) kernel_deadline: bool,
}

impl<T> Shared<T> {
    /// An operation not handed to its back end yet: waiting, unnamed, not cancelled.
    pub(super) fn waiting() -> Self {
        Self {
            slot: Slot::Waiting(None),
            id: None,
            cancel_requested: false,
            kernel_deadline: false,
        }
    }
}

/// The state of an operation's result ([IO2]).
pub(super) enum Slot<T> {
    Waiting(Option<Waker>),
    Done(i32, T),
    Abandoned,
    Taken,
}

/// Records `id` as the operation's name in its back end unless its future was dropped
/// meanwhile; returns whether it was. The drop reads the id under the same lock after
/// marking the slot abandoned, so either the drop sees the id and cancels, or this
/// sees the drop and the caller cancels ([IO6]).
pub(super) fn record_id<T>(shared: &Mutex<Shared<T>>, id: u64) -> bool {
    let mut shared = lock(shared);
    if matches!(shared.slot, Slot::Abandoned) || shared.cancel_requested {
        return true;
    }
    shared.id = Some(id);
    false
}

/// What dropping a future found ([IO6]).
pub(super) enum Dropped<T> {
    /// The operation waits; now abandoned. Its id if the back end named it already.
    Waiting(Option<u64>),
    /// The result was in (or taken): to be freed by the caller, with no lock held.
    Finished(Slot<T>),
}

/// Marks the operation abandoned if it still waits, reading its id under the same
/// lock that `record_id` takes (the loom model `loom_cancel` checks the handshake).
pub(super) fn abandon<T>(shared: &Mutex<Shared<T>>) -> Dropped<T> {
    let mut guard = lock(shared);
    if let Slot::Waiting(_) = &guard.slot {
        guard.slot = Slot::Abandoned;
        Dropped::Waiting(guard.id)
    } else {
        Dropped::Finished(std::mem::replace(&mut guard.slot, Slot::Taken))
    }
}

/// Cancels the operation `id` names ([IO6]): at once on the home thread, where the
/// home state is free; otherwise handed to the loop, which is notified.
pub(super) fn cancel(ctx: &Weak<AioContext>, id: u64) {
    let Some(ctx) = ctx.upgrade() else {
        // The context is gone: its drop cancelled every operation.
        return;
    };
    if ctx.is_home_thread()
        && let Some(mut home) = ctx.try_home()
    {
        home.driver.cancel(id);
        return;
    }
    let weak = ctx.weak();
    ctx.remote.schedule_oneshot(Box::new(move || {
        if let Some(ctx) = weak.upgrade() {
            ctx.home().driver.cancel(id);
        }
    }));
}

/// loom model of the handshake between the home thread naming an operation
/// (`record_id`) and its future dropped on another thread (`abandon`): exactly one of
/// them cancels it, never neither (a lost cancel) and never both.
#[cfg(all(loom, test))]
mod loom_cancel {
    use super::{Dropped, Shared, abandon, record_id};
    use crate::sync::{Arc, Mutex};

    #[test]
    fn exactly_one_side_cancels_a_dropped_operation() {
        loom::model(|| {
            let shared = Arc::new(Mutex::new(Shared::<Vec<u8>>::waiting()));
            let s = Arc::clone(&shared);
            let home = loom::thread::spawn(move || record_id(&s, 7));
            let dropper = matches!(abandon(&shared), Dropped::Waiting(Some(7)));
            let pusher = home.join().unwrap();
            assert!(
                dropper ^ pusher,
                "drop cancels: {dropper}, home thread cancels: {pusher}"
            );
        });
    }
}
