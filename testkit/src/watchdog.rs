//! Turns a hang into a failure with a diagnosis: [`Watchdog`], labelled with the running
//! test's name.
//!
//! One monitor thread per process watches every armed watchdog (a registry of
//! deadlines), so arming one costs a lock and no thread: the fuzz checks arm one per
//! input. When a deadline passes, the monitor writes the test's name, the watchdog's
//! last note and its diagnosis straight to the process's stderr — libtest's output
//! capture would swallow an `eprintln!` of a process about to abort — and aborts.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use aioctx_aio::AioContext;

/// How long any single test may take before a watchdog declares a hang. Far above what
/// the tests need on a loaded 2-core machine; it only turns a hang into a failure.
pub const HANG_LIMIT: Duration = Duration::from_secs(30);

thread_local! {
    /// The test a body runs for when it runs on a thread libtest did not name after it
    /// (the main-loop thread of [`on_main`](crate::on_main)).
    static RUNS_FOR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The running test's name: libtest runs each test on a thread named after it
/// (`module::test`), and [`on_main`](crate::on_main) lends that name to the body it
/// runs on the main-loop thread. Other threads answer with their own name, or
/// `"<unnamed thread>"`.
pub fn test_name() -> String {
    if let Some(name) = RUNS_FOR.with(|r| r.borrow().clone()) {
        return name;
    }
    std::thread::current()
        .name()
        .unwrap_or("<unnamed thread>")
        .to_owned()
}

/// Runs `f` with [`test_name`] answering `name` on this thread.
pub(crate) fn running_for<R>(name: String, f: impl FnOnce() -> R) -> R {
    /// Restores the previous name on return and on unwind.
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            RUNS_FOR.with(|r| *r.borrow_mut() = previous);
        }
    }
    let _restore = Restore(RUNS_FOR.with(|r| r.borrow_mut().replace(name)));
    f()
}

type Diag = Box<dyn Fn() -> String + Send>;

/// One armed watchdog.
struct Armed {
    id: u64,
    label: String,
    limit: Duration,
    deadline: Instant,
    note: String,
    diag: Option<Diag>,
}

struct Registry {
    next_id: u64,
    armed: Vec<Armed>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    armed: Vec::new(),
});
/// Signalled when a watchdog is armed (the monitor's next deadline may be earlier).
static ARMED: Condvar = Condvar::new();

fn registry() -> MutexGuard<'static, Registry> {
    // A panicking diagnosis cannot leave the registry torn: every update is one push,
    // one remove or one string edit.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The monitor: sleeps until the earliest deadline, and aborts the process when one
/// passes with its watchdog still armed.
fn monitor() {
    let mut reg = registry();
    loop {
        let now = Instant::now();
        let Some(first) = reg.armed.iter().min_by_key(|a| a.deadline) else {
            reg = ARMED.wait(reg).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        if first.deadline > now {
            let wait = first.deadline - now;
            reg = ARMED
                .wait_timeout(reg, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        let (label, limit, note) = (first.label.clone(), first.limit, first.note.clone());
        let diag = reg
            .armed
            .iter_mut()
            .min_by_key(|a| a.deadline)
            .and_then(|a| a.diag.take());
        drop(reg);
        // The diagnosis runs unlocked: it may take locks of its own.
        let state = diag.map(|d| d()).unwrap_or_default();
        let mut msg =
            format!("WATCHDOG: `{label}` still running after {limit:?} — treating it as a hang.");
        if !note.is_empty() {
            msg.push_str(&format!(" Last step: {note}."));
        }
        if !state.is_empty() {
            msg.push_str(&format!(" State: {state}"));
        }
        msg.push('\n');
        let _ = std::io::stderr().write_all(msg.as_bytes());
        std::process::abort();
    }
}

/// Turns a hang into a failure with a diagnosis: if it is not dropped within its limit,
/// it prints the running test's name ([`test_name`]), its last [`note`](Self::note) and
/// what its diagnosis reports, and aborts the test process.
///
/// ```
/// use aioctx_testkit::{HANG_LIMIT, Watchdog};
/// let ctx = aioctx_testkit::new_ctx();
/// let _dog = Watchdog::on_ctx(&ctx); // diagnosis: the context's stats
/// ctx.poll(false);
/// ```
#[must_use = "a watchdog watches until it is dropped"]
pub struct Watchdog {
    id: u64,
}

impl Watchdog {
    /// A watchdog labelled with the running test's name, limited to `limit`, with no
    /// diagnosis beyond its notes.
    pub fn arm(limit: Duration) -> Self {
        Self::start(test_name(), limit, None)
    }

    /// [`Watchdog::arm`] for `secs` seconds.
    pub fn arm_secs(secs: u64) -> Self {
        Self::arm(Duration::from_secs(secs))
    }

    /// A watchdog labelled with the running test's name whose diagnosis is `diag`.
    pub fn arm_with(limit: Duration, diag: impl Fn() -> String + Send + 'static) -> Self {
        Self::start(test_name(), limit, Some(Box::new(diag)))
    }

    /// A watchdog labelled with the running test's name, limited to [`HANG_LIMIT`],
    /// whose diagnosis is `ctx`'s stats (or "context dropped").
    pub fn on_ctx(ctx: &std::sync::Arc<AioContext>) -> Self {
        Self::start(test_name(), HANG_LIMIT, Some(ctx_diag(ctx)))
    }

    /// A watchdog for a test: labelled with the running test's name, followed by `what`
    /// when it says more than the name; its diagnosis is `diag`.
    pub fn new(what: &str, limit: Duration, diag: impl Fn() -> String + Send + 'static) -> Self {
        Self::start(label(what), limit, Some(Box::new(diag)))
    }

    /// [`Watchdog::new`] with the context's stats as the diagnosis and [`HANG_LIMIT`].
    pub fn for_ctx(what: &str, ctx: &std::sync::Arc<AioContext>) -> Self {
        Self::start(label(what), HANG_LIMIT, Some(ctx_diag(ctx)))
    }

    /// A watchdog labelled `what` only, for runs that are not tests (the fuzz targets:
    /// their thread is libFuzzer's).
    pub fn named(what: &str, limit: Duration) -> Self {
        Self::start(what.to_owned(), limit, None)
    }

    fn start(label: String, limit: Duration, diag: Option<Diag>) -> Self {
        static MONITOR: OnceLock<()> = OnceLock::new();
        MONITOR.get_or_init(|| {
            std::thread::Builder::new()
                .name("testkit-watchdog".into())
                .spawn(monitor)
                .expect("spawn the watchdog monitor thread");
        });
        let mut reg = registry();
        let id = reg.next_id;
        reg.next_id += 1;
        reg.armed.push(Armed {
            id,
            label,
            limit,
            deadline: Instant::now() + limit,
            note: String::new(),
            diag,
        });
        drop(reg);
        ARMED.notify_all();
        Self { id }
    }

    /// Records what the run is doing now, for the hang report (replaces the last note).
    pub fn note(&self, note: impl FnOnce(&mut String)) {
        let mut reg = registry();
        if let Some(a) = reg.armed.iter_mut().find(|a| a.id == self.id) {
            a.note.clear();
            note(&mut a.note);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let mut reg = registry();
        if let Some(i) = reg.armed.iter().position(|a| a.id == self.id) {
            reg.armed.swap_remove(i);
        }
    }
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").field("id", &self.id).finish()
    }
}

/// The test's name, then `what` when it adds to it (hand-written labels of older tests).
fn label(what: &str) -> String {
    let name = test_name();
    if what.is_empty() || name.ends_with(what) {
        name
    } else {
        format!("{name} ({what})")
    }
}

fn ctx_diag(ctx: &std::sync::Arc<AioContext>) -> Diag {
    let ctx = std::sync::Arc::downgrade(ctx);
    Box::new(move || match ctx.upgrade() {
        Some(ctx) => format!("{:?}", ctx.stats()),
        None => "context dropped".to_owned(),
    })
}

/// A watchdog with no diagnosis, limited to `secs` seconds, labelled with the running
/// test's name (and `what` when it adds to it).
pub fn watchdog(what: &str, secs: u64) -> Watchdog {
    Watchdog::start(label(what), Duration::from_secs(secs), None)
}
