//! What the loop runs when an operation's final completion arrives (a leaf: it
//! imports nothing from the crate). The back ends keep one [`Callback`] per operation
//! in flight and hand it back with the result; they never look inside.

/// A completion callback for a raw ring operation: `(cqe.res, cqe.flags)`.
pub type RawCallback = Box<dyn FnOnce(i32, u32) + Send>;

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
}

impl Callback {
    /// Runs the callback with the operation's final result.
    pub(crate) fn run(self, res: i32, flags: u32) {
        match self {
            Callback::Raw(cb) => cb(res, flags),
            Callback::Op(op) => op.complete(res, flags),
        }
    }
}

impl From<RawCallback> for Callback {
    fn from(cb: RawCallback) -> Self {
        Callback::Raw(cb)
    }
}
