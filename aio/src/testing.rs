//! Testing with aioctx: a guide (documentation only; this module has no items).
//!
//! # The problem: the main context has one home, and libtest has many threads
//!
//! [`main_context`](crate::main_context) is one context per process, and like every
//! context it belongs to the first thread that polls it (its *home*): a `poll`,
//! `block_on` or `make_current` from any other thread panics with
//! "`AioContext::poll called from thread …, but this context (`main`) belongs to …`".
//! libtest runs each `#[test]` on a thread of its own, which ends with the test. So the
//! first test that touches the main context binds it to its thread, and every later test
//! that does the same panics — or passes, depending on which test ran first.
//!
//! The main context is touched by more than `main_context().poll(..)`:
//!
//! - `aioctx_wait::wait_while(None, ..)` polls the main context (and so does
//!   `wait_while(Some(ctx), ..)` from a thread that is not `ctx`'s home);
//! - `aioctx_wait::bh_oneshot(ctx, ..)` waits with a `wait_while` on the main loop;
//! - `aioctx_graph::graph_lock().wrlock()` (the writer) must run on the main loop and
//!   waits there, and the graph container's write side takes it.
//!
//! They also share process-wide state that parallel tests would see: the waiter count
//! (`aioctx_wait::num_waiters`), the graph lock's readers and writer, the main context's
//! [`Stats`](crate::Stats).
//!
//! # The pattern: one main-loop thread per test binary
//!
//! Give the test binary one long-lived thread that makes the main context current once
//! and then runs test bodies sent to it over a channel, one at a time. Each test sends
//! its body and waits for the result (with a timeout, so that a lost wake-up fails the
//! test instead of hanging the run), and resumes the body's panic on its own thread so
//! that libtest reports it. Rules that go with it:
//!
//! - every `wait_while(None, ..)`, `bh_oneshot`, graph write lock and main-context poll
//!   of the binary runs inside such a body;
//! - a body leaves nothing behind: it joins the iothreads it kicks from, drops its read
//!   guards and waits for its bottom halves before it returns, so the next body starts
//!   from a quiet process and may assert process-wide counts;
//! - work that does not need the main context runs on contexts of its own
//!   ([`AioContext::new`](crate::AioContext::new), [`IoThread`](crate::IoThread)),
//!   in parallel tests as usual;
//! - checks that must see an empty process (e.g. "a panicking wait leaves no waiter")
//!   go in a test binary of their own, with one test.
//!
//! In this repository the pattern is `on_main` of the workspace's test kit
//! (`testkit/src/main_loop.rs`, crate `aioctx-testkit`, not published): it also labels
//! hang reports with the calling test's name and fails later bodies at once when one
//! hung. A self-contained version, with two threads standing in for two tests:
//!
//! ```
//! use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
//! use std::sync::mpsc::{Sender, channel};
//! use std::sync::{Mutex, OnceLock};
//! use std::time::Duration;
//!
//! use aioctx_aio::main_context;
//!
//! type Job = Box<dyn FnOnce() + Send>;
//!
//! /// Runs `f` on this binary's one main-loop thread; its value, or its panic.
//! fn on_main<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
//!     static MAIN: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
//!     let jobs = MAIN.get_or_init(|| {
//!         let (tx, rx) = channel::<Job>();
//!         std::thread::Builder::new()
//!             .name("main-loop".into())
//!             .spawn(move || {
//!                 main_context().make_current(); // this thread is the home, for good
//!                 for job in rx {
//!                     job();
//!                 }
//!             })
//!             .expect("spawn the main-loop thread");
//!         Mutex::new(tx)
//!     });
//!     let (tx, rx) = channel();
//!     let job: Job = Box::new(move || {
//!         let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
//!     });
//!     jobs.lock().unwrap().send(job).expect("the main-loop thread died");
//!     match rx.recv_timeout(Duration::from_secs(30)) {
//!         Ok(Ok(value)) => value,
//!         Ok(Err(panic)) => resume_unwind(panic),
//!         Err(_) => panic!("the body hung on the main loop"),
//!     }
//! }
//!
//! // Two "tests", each on a thread of its own as libtest runs them.
//! let test_a = std::thread::spawn(|| on_main(|| main_context().poll(false)));
//! test_a.join().unwrap();
//! let test_b = std::thread::spawn(|| {
//!     // Polling directly from this thread would panic: the main context's home is
//!     // the main-loop thread now...
//!     let direct = std::panic::catch_unwind(|| main_context().poll(false));
//!     assert!(direct.is_err());
//!     // ...and through it, it works.
//!     on_main(|| {
//!         let ctx = main_context();
//!         let bh = ctx.bh_new(|| {});
//!         bh.schedule();
//!         ctx.poll(false)
//!     })
//! });
//! assert!(test_b.join().unwrap(), "the bottom half ran on the main loop");
//! ```
//!
//! With the test kit, a test is one call:
//!
//! ```ignore
//! #[test]
//! fn writer_waits_for_the_iothread_reader() {
//!     aioctx_testkit::on_main(|| {
//!         let io = aioctx_aio::IoThread::new("io0").unwrap();
//!         assert_eq!(aioctx_wait::bh_oneshot(io.ctx(), || 6 * 7), 42);
//!         drop(aioctx_graph::graph_lock().wrlock());
//!     });
//! }
//! ```
//!
//! (`tests/testing_guide.rs` in the repository runs these cases: `wait_while(None)`, a
//! `bh_oneshot`, the graph writer, from several tests of one binary.)
//!
//! # Other helpers of the test kit
//!
//! - A watchdog (`Watchdog`) that turns a hang into an abort with a diagnosis, labelled
//!   with the running test's name (libtest names each test's thread after the test);
//!   tests never assert on wall-clock speed, they only bound hangs.
//! - `uring_ctx`: a context on io_uring or a printed "skipped" line where io_uring is
//!   denied or the run selects epoll (`AIOCTX_BACKEND=epoll`), so that the same suite
//!   runs on both back ends.
//! - `CountingAlloc`: a per-thread counting global allocator, for "allocates nothing"
//!   checks that parallel tests cannot disturb.
