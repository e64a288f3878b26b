//! The one unsafe boundary through which an entry reaches the ring ([RW4]
//! (`backend/raw.rs`)): an [`Sqe`] is an io_uring entry whose memory obligations are met.

use io_uring::squeue;

/// An entry whose memory obligations are met: every buffer, descriptor array, path or
/// other memory it names stays valid until the operation's final CQE was reaped and the
/// owner that the loop keeps for it (its table slot) was freed.
pub(crate) struct Sqe(squeue::Entry);

impl Sqe {
    /// Wraps `entry`.
    ///
    /// # Safety
    /// Everything `entry` names stays valid (and memory the kernel writes is not
    /// otherwise accessed) until the operation's table slot is freed, which the loop
    /// does only after the operation's final CQE was reaped (or never, when it leaks).
    pub(crate) unsafe fn new(entry: squeue::Entry) -> Self {
        Self(entry)
    }

    /// The same entry with `IOSQE_IO_LINK`: the next entry of the ring starts only once
    /// this one completed in full. Only the loop links entries (`io/link.rs`), pushing a
    /// chain's entries back to back; users' links are refused ([RW2] (`backend/raw.rs`)).
    pub(crate) fn linked(self) -> Self {
        Self(self.0.flags(squeue::Flags::IO_LINK))
    }

    /// The entry, with `user_data` set.
    pub(crate) fn with_user_data(&self, user_data: u64) -> squeue::Entry {
        self.0.clone().user_data(user_data)
    }
}
