//! Operation sequences and reference models for aioctx's fuzz targets.
//!
//! Each module drives the real code with a sequence of operations decoded by
//! [`arbitrary`] and checks it against a small reference model after every step:
//!
//! - [`bh`]: bottom halves (slices, FIFO, cancel keeps place, idle is not
//!   progress, nested polls, delete from anywhere, scheduling from a second thread);
//! - [`timers`]: timer lists (modify, anticipate, delete, clock advance, poll);
//! - [`graph`]: the graph lock (readers in tasks on four contexts, one of which the run
//!   drops; the writer on the main loop);
//! - [`io_ops`]: owned-buffer I/O operations submitted, polled, cancelled, dropped and
//!   timed out in any interleaving, with the context dropped under them, on either back
//!   end, with a live-buffer counter.
//!
//! The same `run(&[Op])` is called by the cargo-fuzz targets in `fuzz/`, by the replay
//! of the committed corpus and by the proptests (`cargo test -p aioctx-fuzzcheck`). A
//! failed check panics with the step and what differed.
#![deny(missing_docs)]

use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

use arbitrary::{Arbitrary, Unstructured};

pub mod bh;
pub mod graph;
pub mod io_ops;
pub mod timers;

/// Decodes `data` as libFuzzer's `fuzz_target!(|ops: Vec<Op>| ..)` would
/// (`arbitrary_take_rest`); `None` when the bytes do not decode.
pub fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<Vec<T>> {
    Vec::<T>::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// The committed seed corpus of a fuzz target (`fuzz/corpus/<target>/`), sorted by
/// name: each file's path and bytes, for the replay tests.
///
/// # Panics
/// When the directory cannot be read, or holds fewer than ten files (a corpus that
/// went missing must not pass as an empty replay).
pub fn corpus(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("read a corpus entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus {} has only {} files",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|f| {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f, data)
        })
        .collect()
}

/// Decodes one operation from each chunk (the proptests' encoding: random bytes decoded
/// by `decode` would mostly end after a couple of operations).
pub fn decode_each<'a, T: Arbitrary<'a>>(chunks: &'a [Vec<u8>]) -> Vec<T> {
    chunks
        .iter()
        .filter_map(|c| T::arbitrary(&mut Unstructured::new(c)).ok())
        .collect()
}

thread_local! {
    /// Set while this thread runs a call whose panic the run expects (see
    /// [`catch_expected_panic`]).
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, whose panic is an expected outcome the run checks (a misuse the library
/// must refuse), and returns its panic payload, if any.
///
/// The panic hook stays silent for it: libFuzzer's harness installs a hook that aborts
/// the process on *any* panic, which would turn every expected refusal into a crash.
/// The hook installed here (once, wrapping whatever hook was there) skips only panics
/// raised on this thread inside `f`; every other panic still reaches the old hook.
pub(crate) fn catch_expected_panic(f: impl FnOnce()) -> Option<Box<dyn std::any::Any + Send>> {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    /// Lowers the flag on return and on unwind.
    struct Expecting;
    impl Drop for Expecting {
        fn drop(&mut self) {
            EXPECTING_PANIC.with(|e| e.set(false));
        }
    }
    EXPECTING_PANIC.with(|e| e.set(true));
    let _expecting = Expecting;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).err()
}

type Job = Box<dyn FnOnce() + Send>;
/// A job and where to say it is done.
type RemoteJob = (Job, Sender<()>);

/// Runs `f` on a second, long-lived thread (one per process) and waits for it: the
/// "schedule from another thread" operations. The thread only runs what it is given;
/// it never polls a context.
pub(crate) fn on_remote_thread(f: impl FnOnce() + Send + 'static) {
    static REMOTE: OnceLock<Mutex<Sender<RemoteJob>>> = OnceLock::new();
    let tx = REMOTE.get_or_init(|| {
        let (tx, rx) = channel::<RemoteJob>();
        std::thread::Builder::new()
            .name("fuzz-remote".into())
            .spawn(move || {
                for (job, done) in rx {
                    job();
                    let _ = done.send(());
                }
            })
            .expect("spawn the fuzz-remote thread");
        Mutex::new(tx)
    });
    let (dtx, drx) = channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((Box::new(f), dtx))
        .expect("the fuzz-remote thread died");
    drx.recv().expect("the fuzz-remote job panicked");
}
