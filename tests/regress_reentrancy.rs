//! Re-entrancy: user code that runs where the loop holds its own state — a destructor
//! run during thread-local teardown, a user's value dropped by the loop, a context
//! local's init closure — may call back into the context. Run on both back ends
//! (`AIOCTX_BACKEND=epoll` too).
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::task::{Context, Waker};

use aioctx::aio::{AioContext, ContextLocal, IoBuf, IoBufMut};
use common::{HANG_LIMIT, Watchdog, new_ctx, pipe};

/// Set in the child process of the thread-local test.
const TLS_CHILD: &str = "AIOCTX_REGRESS_TLS_CHILD";

/// Calls into the current-context API from its destructor, and counts that it did.
struct TlsProbe;

static TLS_PROBES_RAN: AtomicUsize = AtomicUsize::new(0);

impl Drop for TlsProbe {
    fn drop(&mut self) {
        // What a graph `ReadGuard`'s drop or any destructor of an upper layer does.
        let _ = aioctx::aio::try_current();
        aioctx::aio::with_current(|_| {});
        TLS_PROBES_RAN.fetch_add(1, Ordering::SeqCst);
        println!("tls probe ran");
    }
}

thread_local! {
    static PROBE_BEFORE: TlsProbe = const { TlsProbe };
    static PROBE_AFTER: TlsProbe = const { TlsProbe };
}

/// The child's body: a thread whose current context is set, with one probe registered
/// before the crate's current-context slot and one after, so that whatever order the
/// platform destroys thread-locals in, one probe runs after the slot is gone.
fn tls_child() {
    std::thread::spawn(|| {
        PROBE_BEFORE.with(|_| {});
        let ctx = new_ctx();
        ctx.make_current();
        assert!(aioctx::aio::try_current().is_some());
        PROBE_AFTER.with(|_| {});
    })
    .join()
    .expect("the probe thread ended normally");
    println!(
        "probes ran: {}",
        TLS_PROBES_RAN.load(std::sync::atomic::Ordering::SeqCst)
    );
}

/// A destructor that runs during thread-local teardown (after the current-context slot
/// was destroyed) may ask for the current context: it gets none, instead of a panic in
/// a destructor, which aborts the process. Runs in a child process, so that the abort
/// of the old code is a failure here rather than the end of the test binary.
#[test]
fn regress_current_context_from_a_thread_local_destructor_is_none_not_an_abort() {
    if std::env::var_os(TLS_CHILD).is_some() {
        tls_child();
        return;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "regress_current_context_from_a_thread_local_destructor_is_none_not_an_abort",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TLS_CHILD, "1")
        .output()
        .expect("run the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("probes ran: 2"),
        "the child failed ({}): a destructor calling try_current/with_current during \
         thread-local teardown must see no context.\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

/// A buffer whose destructor polls its context (a user's value that calls back into the
/// loop when the loop drops it).
struct PollingBuf {
    data: Vec<u8>,
    ctx: Weak<AioContext>,
    dropped: Arc<AtomicUsize>,
}

// SAFETY: delegates to the `Vec`, whose heap bytes do not move with it.
unsafe impl IoBuf for PollingBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.data.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.data.len()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for PollingBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.data.as_mut_ptr()
    }
}

impl Drop for PollingBuf {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.upgrade()
            && ctx.is_home_thread()
        {
            ctx.poll(false);
        }
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A read of an empty pipe whose future is dropped while it waits; then the pipe gets
/// data. The loop drops the abandoned read's buffer (a user's value) with no borrow of
/// its state held, so the buffer's destructor may poll the context.
#[test]
fn regress_abandoned_read_buffer_dropped_by_the_loop_may_poll_its_context() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let dropped = Arc::new(AtomicUsize::new(0));
    let buf = PollingBuf {
        data: vec![0; 16],
        ctx: Arc::downgrade(&ctx),
        dropped: Arc::clone(&dropped),
    };
    let mut read = Box::pin(ctx.read_at(r.as_raw_fd(), buf, 0));
    assert!(
        read.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending(),
        "a read of an empty pipe completed"
    );
    // Let the loop take the read (epoll: into its stream table; io_uring: submitted).
    for _ in 0..3 {
        ctx.poll(false);
    }
    drop(read);
    // SAFETY: writes one byte from a valid local to an open descriptor.
    let n = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    assert_eq!(n, 1);
    // Whatever the back end does with the read now, the loop drops its buffer.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        while dropped.load(Ordering::SeqCst) == 0 {
            ctx.poll(true);
        }
    }));
    if let Err(p) = outcome {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("the loop dropped the buffer while borrowing its own state: {msg}");
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

static REENTERED: ContextLocal<u32> = ContextLocal::new();

/// `AioContext::local`'s init closure asking for its own key: refused with a message
/// (it used to deadlock in the `OnceLock`), and the slot is still usable after.
#[test]
fn regress_context_local_init_asking_for_its_own_key_panics_not_deadlocks() {
    let ctx = new_ctx();
    let (tx, rx) = mpsc::channel();
    let c = Arc::clone(&ctx);
    // On another thread, so that the old deadlock is reported instead of hanging here.
    std::thread::spawn(move || {
        let res = catch_unwind(AssertUnwindSafe(|| {
            *c.local(&REENTERED, || *c.local(&REENTERED, || 1) + 1)
        }));
        let res = res.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        });
        let _ = tx.send(res);
    });
    let res = rx
        .recv_timeout(HANG_LIMIT)
        .expect("AioContext::local deadlocked on a re-entrant initialisation");
    let msg = res.expect_err("a re-entrant initialisation returned a value");
    assert!(
        msg.contains("re-entrant"),
        "the panic does not say what was wrong: {msg}"
    );
    assert_eq!(*ctx.local(&REENTERED, || 7), 7, "the slot stayed usable");
}

/// Another thread asking for a key while its value is being created waits for that
/// value (the re-entrancy check is per thread).
#[test]
fn context_local_asked_by_another_thread_during_init_waits_for_the_value() {
    static SLOW: ContextLocal<u32> = ContextLocal::new();
    let ctx = new_ctx();
    let (started_tx, started_rx) = mpsc::channel();
    let c = Arc::clone(&ctx);
    let other = std::thread::spawn(move || {
        started_rx.recv().expect("the init started");
        *c.local(&SLOW, || 2)
    });
    let v = *ctx.local(&SLOW, || {
        started_tx.send(()).expect("the other thread waits");
        1
    });
    assert_eq!(v, 1);
    assert_eq!(other.join().expect("the other thread"), 1);
}

/// Polls its context (and schedules on it) from its destructor; counts its drops.
struct PollOnDrop {
    ctx: Weak<AioContext>,
    dropped: Arc<AtomicUsize>,
}

impl Drop for PollOnDrop {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.upgrade() {
            ctx.schedule_oneshot(|| {});
            ctx.poll(false);
        }
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sweep of the places the loop drops a user's closure while it runs: a deleted bottom
/// half, a deleted timer, a replaced fd handler — each deleted from inside a bottom half
/// (a nested `poll` in the destructor) — all dropped with no borrow or lock held.
#[test]
fn closures_deleted_from_a_callback_may_poll_in_their_destructor() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let dropped = Arc::new(AtomicUsize::new(0));
    let probe = || PollOnDrop {
        ctx: Arc::downgrade(&ctx),
        dropped: Arc::clone(&dropped),
    };
    let (r, _w) = pipe();
    let (p1, p2, p3) = (probe(), probe(), probe());
    let bh = ctx.bh_new(move || {
        let _ = &p1;
    });
    let timer = ctx.timer_new(aioctx::aio::ClockType::Realtime, move || {
        let _ = &p2;
    });
    timer.modify(i64::MAX / 2);
    ctx.set_fd_handler(
        r.as_raw_fd(),
        Some(Box::new(move || {
            let _ = &p3;
        })),
        None,
    )
    .expect("set the handler");
    ctx.poll(false); // the handler is armed
    let held = std::sync::Mutex::new(Some((bh, timer)));
    let (c, fd) = (Arc::downgrade(&ctx), r.as_raw_fd());
    let deleter = ctx.bh_new(move || {
        drop(held.lock().unwrap().take());
        if let Some(ctx) = c.upgrade() {
            ctx.set_fd_handler(fd, Some(Box::new(|| {})), None)
                .expect("replace the handler");
        }
    });
    deleter.schedule();
    while dropped.load(Ordering::SeqCst) < 3 {
        ctx.poll(false);
    }
    ctx.set_fd_handler(r.as_raw_fd(), None, None)
        .expect("remove the handler");
    ctx.poll(false);
}
