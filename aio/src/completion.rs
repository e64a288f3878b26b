//! What the loop runs when an operation's completions arrive (a leaf: it imports
//! nothing from the crate). The back ends keep one [`Callback`] per operation in
//! flight and hand it back with the result; they never look inside. A kept handler
//! is a user's `std::sync::Arc` (a public type, so not the loom shim's).

use std::sync::Arc;

/// A completion callback for a raw ring operation: `(cqe.res, cqe.flags)`.
pub type RawCallback = Box<dyn FnOnce(i32, u32) + Send>;

/// A completion handler the caller keeps and submits again and again
/// ([`AioContext::submit_raw_handler`]): the loop holds one `Arc` reference per
/// operation in flight, so a submission allocates nothing, and one handler can serve a
/// multishot operation, whose every CQE it receives.
///
/// [`AioContext::submit_raw_handler`]: crate::AioContext::submit_raw_handler
pub trait CompletionHandler: Send + Sync + 'static {
    /// Receives one CQE of an operation submitted with this handler: `res` is the
    /// result (a count or `-errno`), `flags` the CQE's flags. While `flags` has
    /// `IORING_CQE_F_MORE` (see [`io_uring::cqueue::more`]) more CQEs of the same
    /// operation follow; the CQE without it is the operation's last.
    fn complete(&self, res: i32, flags: u32);
}

/// A typed operation in flight that completes itself: the one allocation a typed
/// operation makes for its state is handed to the back end as is.
pub(crate) trait Complete: Send {
    /// Completes the operation with a CQE-style result (`res` is a count or `-errno`).
    fn complete(self: Box<Self>, res: i32, flags: u32);
}

/// The owner of an operation's memory while it is in flight: a user's raw callback
/// (`submit_raw`) or a typed operation (`io.rs`). Dropped unrun, it frees what it owns
/// (the operation never reached the kernel).
pub(crate) enum Callback {
    /// A raw operation's callback.
    Raw(RawCallback),
    /// A typed operation.
    Op(Box<dyn Complete>),
    /// A kept handler (`submit_raw_handler`); the only kind a multishot operation has.
    Shared(Arc<dyn CompletionHandler>),
}

impl Callback {
    /// Runs the callback with the operation's final result.
    pub(crate) fn run(self, res: i32, flags: u32) {
        match self {
            Callback::Raw(cb) => cb(res, flags),
            Callback::Op(op) => op.complete(res, flags),
            Callback::Shared(h) => h.complete(res, flags),
        }
    }
}

impl From<RawCallback> for Callback {
    fn from(cb: RawCallback) -> Self {
        Callback::Raw(cb)
    }
}
