//! `EventNotifier`: an eventfd to signal between threads, usable as an fd-handler source
//! (QEMU: `EventNotifier`, util/event_notifier-posix.c).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::sys;

/// An eventfd-backed flag: [`set`](Self::set) from any thread makes the fd readable until
/// [`test_and_clear`](Self::test_and_clear).
///
/// ```
/// let e = aioctx_aio::EventNotifier::new()?;
/// assert!(!e.test_and_clear()?);
/// e.set()?;
/// e.set()?;
/// assert!(e.test_and_clear()?);
/// assert!(!e.test_and_clear()?);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct EventNotifier {
    fd: OwnedFd,
}

impl EventNotifier {
    /// Creates a cleared notifier (QEMU: `event_notifier_init(e, 0)`).
    ///
    /// # Errors
    /// The `eventfd(2)` error, e.g. `EMFILE`.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            fd: sys::eventfd()?,
        })
    }

    /// Signals the notifier (QEMU: `event_notifier_set`).
    ///
    /// # Errors
    /// The `write(2)` error; a saturated counter is not an error.
    pub fn set(&self) -> io::Result<()> {
        sys::eventfd_write(self.fd.as_fd())
    }

    /// Clears the notifier and returns whether it was set
    /// (QEMU: `event_notifier_test_and_clear`).
    ///
    /// # Errors
    /// The `read(2)` error.
    pub fn test_and_clear(&self) -> io::Result<bool> {
        sys::eventfd_read(self.fd.as_fd())
    }

    /// The descriptor, for [`AioContext::set_fd_handler`](crate::AioContext::set_fd_handler).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for EventNotifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
