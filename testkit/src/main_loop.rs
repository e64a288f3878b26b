//! The process's one main-loop thread: the home of the main context, where every test of
//! `wait_while(None)`, `bh_oneshot` or the graph writer runs its body.
//!
//! The main context belongs to the first thread that polls it, and libtest runs each
//! test on a thread of its own that ends with the test; so a second test that polls the
//! main context from its own thread panics ("not its home thread"). [`on_main`] starts
//! one long-lived thread, makes the main context current there, and runs the bodies it
//! is given one at a time. While a body runs, the main context and the process-wide
//! waiter and reader counts are its own.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock, PoisonError};

use aioctx_aio::main_context;

use crate::watchdog::{HANG_LIMIT, running_for, test_name};

type Job = Box<dyn FnOnce() + Send>;

/// The test whose body hung on the main-loop thread, once one did: every later body
/// would queue behind it, so they fail at once naming it.
static WEDGED: Mutex<Option<String>> = Mutex::new(None);

fn main_loop() -> &'static Mutex<Sender<Job>> {
    static MAIN: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    MAIN.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("main-loop".into())
            .spawn(move || {
                main_context().make_current();
                for job in rx {
                    job();
                }
            })
            .expect("spawn the main-loop thread");
        Mutex::new(tx)
    })
}

/// Runs `f` on the process's one main-loop thread (the main context's home, where
/// `main_context()` is current) and returns its value; a panic of `f` fails the caller
/// with the same message. Bodies run one at a time, in the order they are given.
///
/// Inside `f`, [`test_name`] still answers the calling test's name, so a
/// [`Watchdog`](crate::Watchdog) armed there is labelled with it.
///
/// # Panics
/// When `f` panics (the message is repeated: the main-loop thread's own report goes to
/// whichever test's output capture it inherited), or when it does not finish within
/// [`HANG_LIMIT`] (the message names the test), or when an earlier body hung.
///
/// ```
/// use aioctx_aio::main_context;
/// let polled = aioctx_testkit::on_main(|| main_context().poll(false));
/// # let _ = polled;
/// ```
pub fn on_main<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    on_main_with(String::new, f)
}

/// [`on_main`], with `diag` describing the state when the body hangs (e.g. the waiter
/// count, the graph lock's readers); `diag` runs on the calling thread.
///
/// # Panics
/// As [`on_main`].
pub fn on_main_with<R: Send + 'static>(
    diag: impl FnOnce() -> String,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let test = test_name();
    if let Some(hung) = WEDGED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        panic!("`{test}` cannot run: the main-loop thread is still stuck in `{hung}`");
    }
    let (tx, rx) = mpsc::channel();
    let name = test.clone();
    let job: Job = Box::new(move || {
        let r = running_for(name, || catch_unwind(AssertUnwindSafe(f)));
        let _ = tx.send(r);
    });
    main_loop()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .expect("the main-loop thread died");
    match rx.recv_timeout(HANG_LIMIT) {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => panic!("`{test}` failed: {}", panic_message(&*payload)),
        Err(RecvTimeoutError::Timeout) => {
            *WEDGED.lock().unwrap_or_else(PoisonError::into_inner) = Some(test.clone());
            let state = diag();
            panic!(
                "watchdog: `{test}` did not finish within {HANG_LIMIT:?} on the main-loop \
                 thread (a lost wake-up leaves the main loop asleep){}{state}",
                if state.is_empty() { "" } else { "; state: " }
            )
        }
        Err(RecvTimeoutError::Disconnected) => panic!("the main-loop thread died"),
    }
}

/// A panic payload's message (`String` or `&str`), or `"<non-string panic payload>"`.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "<non-string panic payload>".to_owned())
}
