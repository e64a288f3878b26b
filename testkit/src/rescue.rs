//! Unblocking a wait from outside, so that a test that would hang fails with a
//! diagnosis instead of leaving the watchdog to abort the whole binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Runs `rescue` on its own thread after `grace` unless dropped (or finished) first.
#[derive(Debug)]
pub struct Rescue {
    tx: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Rescue {
    /// Arms `rescue` to run after `grace`.
    pub fn after(grace: Duration, rescue: impl FnOnce() + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&fired);
        let thread = thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(grace) {
                // SeqCst: read by `fired` on the test's thread (no other pairing).
                f.store(true, Ordering::SeqCst);
                rescue();
            }
        });
        Self {
            tx: Some(tx),
            fired,
            thread: Some(thread),
        }
    }

    /// Whether the rescue ran (so far).
    pub fn fired(&self) -> bool {
        // SeqCst: pairs with the store in `after`'s thread.
        self.fired.load(Ordering::SeqCst)
    }

    /// Stops the rescue, waiting for it if it is running; whether it ran.
    pub fn finish(mut self) -> bool {
        self.stop();
        self.fired()
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Rescue {
    fn drop(&mut self) {
        self.stop();
    }
}
