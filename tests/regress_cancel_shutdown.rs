//! Adversarial probes of cancel-on-drop, the shutdown path, [T6] (`timer.rs`) and task
//! shutdown, each named `probe_<what it tries>`, kept as regression tests once what they
//! found was fixed.
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

use aioctx::aio::{AioContext, ClockType, IoThread, Timer};
use common::{Watchdog, new_ctx, pipe, write_fd};

fn set_nonblocking(fd: RawFd) {
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0);
    }
}

/// Nonblocking read of whatever is there; `None` on EAGAIN.
fn try_read(fd: RawFd) -> Option<usize> {
    let mut buf = [0u8; 65536];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then_some(n as usize)
}

fn poll_once<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    let mut cx = Context::from_waker(waker);
    Pin::new(fut).poll(&mut cx)
}

/// Runs the loop without blocking until it has nothing more to do right now.
fn settle(ctx: &AioContext) {
    for _ in 0..8 {
        ctx.poll(false);
    }
}

/// After a dropped read on `r`, data written to `w` reaches a new reader.
fn next_reader_gets(ctx: &Arc<AioContext>, r: RawFd, w: RawFd, what: &str) {
    settle(ctx);
    write_fd(w, b"fresh");
    let (res, buf) = ctx.block_on(ctx.read_at(r, vec![0u8; 16], 0));
    let n = res.unwrap_or_else(|e| panic!("{what}: the new read failed: {e}"));
    assert_eq!(
        &buf[..n],
        b"fresh",
        "{what}: the data went to the dropped read"
    );
}

/// A read pending on an empty pipe, dropped on another thread than its home: the
/// cancel is handed to the loop; once the loop ran, data reaches the next reader.
#[test]
fn probe_read_dropped_off_home_then_next_reader_gets_data() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    for _ in 0..50 {
        let (r, w) = pipe();
        let mut op = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut op, Waker::noop()).is_pending());
        settle(&ctx);
        thread::spawn(move || drop(op)).join().unwrap();
        next_reader_gets(&ctx, r.as_raw_fd(), w.as_raw_fd(), "off-home drop");
    }
}

/// A waker that, when woken, drops the operation it holds.
struct DropOnWake(Mutex<Option<Box<dyn Send>>>, AtomicBool);
impl Wake for DropOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        drop(self.0.lock().unwrap().take());
        self.1.store(true, Ordering::SeqCst);
    }
}

/// A read dropped inside the completion of another one (its waker runs in the
/// completion callback, where the home state is borrowed).
#[test]
fn probe_read_dropped_inside_another_completion() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    for _ in 0..50 {
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        let mut b = ctx.read_at(r2.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut b, Waker::noop()).is_pending());
        let hook = Arc::new(DropOnWake(
            Mutex::new(Some(Box::new(b))),
            AtomicBool::new(false),
        ));
        let waker = Waker::from(Arc::clone(&hook));
        let mut a = ctx.read_at(r1.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut a, &waker).is_pending());
        settle(&ctx);
        write_fd(w1.as_raw_fd(), b"a");
        while !hook.1.load(Ordering::SeqCst) {
            ctx.poll(true);
        }
        assert!(matches!(poll_once(&mut a, &waker), Poll::Ready((Ok(1), _))));
        next_reader_gets(&ctx, r2.as_raw_fd(), w2.as_raw_fd(), "drop in completion");
    }
}

/// A read dropped inside a nested poll (a BH that polls the loop again and drops it).
#[test]
fn probe_read_dropped_inside_a_nested_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    for _ in 0..20 {
        let (r, w) = pipe();
        let mut op = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut op, Waker::noop()).is_pending());
        let c = Arc::clone(&ctx);
        let slot = Arc::new(Mutex::new(Some(op)));
        let s = Arc::clone(&slot);
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        ctx.schedule_oneshot(move || {
            c.poll(false);
            drop(s.lock().unwrap().take());
            c.poll(false);
            d.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            ctx.poll(true);
        }
        next_reader_gets(&ctx, r.as_raw_fd(), w.as_raw_fd(), "drop in nested poll");
    }
}

/// readv on an empty pipe, writev on a full pipe and fsync on a file, each dropped after
/// its first poll; the pipe data goes to the next reader, the dropped writev never
/// writes once room appears, and the context drops cleanly.
#[test]
fn probe_readv_writev_fsync_dropped() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let mut rv = ctx.readv_at(r.as_raw_fd(), vec![vec![0u8; 4], vec![0u8; 4]], 0);
    assert!(poll_once(&mut rv, Waker::noop()).is_pending());
    settle(&ctx);
    drop(rv);
    next_reader_gets(&ctx, r.as_raw_fd(), w.as_raw_fd(), "readv drop");

    let (fr, fw) = pipe();
    set_nonblocking(fw.as_raw_fd());
    while {
        // SAFETY: the buffer is valid for reads of its length.
        (unsafe { libc::write(fw.as_raw_fd(), [7u8; 4096].as_ptr().cast(), 4096) }) > 0
    } {}
    let mut wv = ctx.writev_at(fw.as_raw_fd(), vec![vec![1u8; 8], vec![2u8; 8]], 0);
    assert!(poll_once(&mut wv, Waker::noop()).is_pending());
    settle(&ctx);
    drop(wv);
    settle(&ctx);
    set_nonblocking(fr.as_raw_fd());
    let mut drained = 0;
    while let Some(n) = try_read(fr.as_raw_fd()) {
        drained += n;
    }
    assert!(drained > 0);
    settle(&ctx);
    assert_eq!(
        try_read(fr.as_raw_fd()),
        None,
        "the dropped writev wrote after it was dropped and room appeared"
    );

    let tf = common::tempfile("probe-fsync");
    let mut fs = Box::pin(ctx.fsync(tf.file.as_raw_fd()));
    let _ = fs.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    drop(fs);
    settle(&ctx);
    drop(ctx);
}

/// A submitted read dropped on one thread while the context's last `Arc` is dropped on
/// another, both orders.
#[test]
fn probe_op_drop_racing_context_drop() {
    let _dog = common::Watchdog::arm_secs(120);
    for i in 0..200 {
        let ctx = new_ctx();
        let (r, _w) = pipe();
        let mut op = ctx.read_at(r.as_raw_fd(), vec![0u8; 64], 0);
        assert!(poll_once(&mut op, Waker::noop()).is_pending());
        settle(&ctx);
        let go = Arc::new(AtomicBool::new(false));
        let g = Arc::clone(&go);
        if i % 2 == 0 {
            let t = thread::spawn(move || {
                while !g.load(Ordering::SeqCst) {}
                drop(op);
            });
            go.store(true, Ordering::SeqCst);
            drop(ctx);
            t.join().unwrap();
        } else {
            let t = thread::spawn(move || {
                while !g.load(Ordering::SeqCst) {}
                drop(ctx);
            });
            go.store(true, Ordering::SeqCst);
            drop(op);
            t.join().unwrap();
        }
        drop(r);
    }
}

/// A timer that re-armed itself in its callback and that a nested poll deferred.
struct Deferred {
    ctx: Arc<AioContext>,
    timer: Arc<OnceLock<Timer>>,
    runs: Arc<AtomicUsize>,
}

fn deferred_timer(inside: impl Fn(&Timer, usize) + Send + Sync + 'static) -> Deferred {
    let ctx = new_ctx();
    let timer: Arc<OnceLock<Timer>> = Arc::new(OnceLock::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let (c, t, n) = (Arc::downgrade(&ctx), Arc::clone(&timer), Arc::clone(&runs));
    let tm = ctx.timer_new(ClockType::Realtime, move || {
        let run = n.fetch_add(1, Ordering::SeqCst);
        let timer = t.get().unwrap();
        if run == 0 {
            timer.modify(ClockType::Realtime.now_ns() - 1);
            c.upgrade().unwrap().poll(false);
            assert!(timer.pending(), "[T6]: deferred timer stays pending");
        }
        inside(timer, run);
    });
    assert!(timer.set(tm).is_ok());
    timer
        .get()
        .unwrap()
        .modify(ClockType::Realtime.now_ns() - 1);
    Deferred { ctx, timer, runs }
}

/// Deleted from another thread while deferred: stays deleted after the callback returns.
#[test]
fn probe_deferred_timer_deleted_from_another_thread() {
    let d = deferred_timer(|timer, run| {
        if run == 0 {
            thread::scope(|s| {
                s.spawn(|| timer.delete());
            });
        }
    });
    let _dog = Watchdog::on_ctx(&d.ctx);
    d.ctx.poll(false);
    assert_eq!(d.runs.load(Ordering::SeqCst), 1);
    assert!(
        !d.timer.get().unwrap().pending(),
        "a delete while deferred was undone"
    );
    settle(&d.ctx);
    assert_eq!(d.runs.load(Ordering::SeqCst), 1, "a deleted timer ran");
}

/// Modified far into the future from another thread while deferred: the new deadline
/// stands after the callback returns.
#[test]
fn probe_deferred_timer_modified_from_another_thread() {
    let far = ClockType::Realtime.now_ns() + 3_600_000_000_000;
    let d = deferred_timer(move |timer, run| {
        if run == 0 {
            thread::scope(|s| {
                s.spawn(|| timer.modify(far));
            });
        }
    });
    let _dog = Watchdog::on_ctx(&d.ctx);
    d.ctx.poll(false);
    let t = d.timer.get().unwrap();
    assert!(t.pending());
    assert_eq!(
        t.expire_time(),
        Some(far),
        "a modify while deferred was undone"
    );
    settle(&d.ctx);
    assert_eq!(
        d.runs.load(Ordering::SeqCst),
        1,
        "the timer ran before its deadline"
    );
}

/// A panic in the callback while deferred: the timer is put back and runs again.
#[test]
fn probe_deferred_timer_callback_panics() {
    let d = deferred_timer(|_, run| {
        if run == 0 {
            panic!("probe: panic while deferred");
        }
    });
    let _dog = Watchdog::on_ctx(&d.ctx);
    let r = catch_unwind(AssertUnwindSafe(|| d.ctx.poll(false)));
    assert!(
        r.is_err(),
        "the callback's panic should reach poll's caller"
    );
    assert!(d.timer.get().unwrap().pending(), "[T6]: put back on unwind");
    settle(&d.ctx);
    assert_eq!(d.runs.load(Ordering::SeqCst), 2);
}

/// The context is shut down (its `IoThread` stops and drops) while its timer is
/// deferred inside its own callback: nothing runs afterwards, nothing hangs.
#[test]
fn probe_iothread_dropped_while_timer_deferred() {
    let _dog = common::Watchdog::arm_secs(60);
    for _ in 0..20 {
        let iot = IoThread::new("probe-deferred").unwrap();
        let timer: Arc<OnceLock<Timer>> = Arc::new(OnceLock::new());
        let (entered, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let runs = Arc::new(AtomicUsize::new(0));
        let (t, e, rl, n) = (
            Arc::clone(&timer),
            Arc::clone(&entered),
            Arc::clone(&release),
            Arc::clone(&runs),
        );
        let c = Arc::downgrade(iot.ctx());
        let tm = iot.ctx().timer_new(ClockType::Realtime, move || {
            if n.fetch_add(1, Ordering::SeqCst) > 0 {
                return;
            }
            let timer = t.get().unwrap();
            timer.modify(ClockType::Realtime.now_ns() - 1);
            if let Some(c) = c.upgrade() {
                c.poll(false);
            }
            e.store(true, Ordering::SeqCst);
            while !rl.load(Ordering::SeqCst) {
                thread::yield_now();
            }
        });
        assert!(timer.set(tm).is_ok());
        timer
            .get()
            .unwrap()
            .modify(ClockType::Realtime.now_ns() - 1);
        common::wait_until("the callback deferred its timer", || {
            entered.load(Ordering::SeqCst)
        });
        let r2 = Arc::clone(&release);
        let rel = thread::spawn(move || {
            thread::sleep(std::time::Duration::from_millis(1));
            r2.store(true, Ordering::SeqCst);
        });
        drop(iot);
        rel.join().unwrap();
        let t = timer.get().unwrap();
        assert!(
            t.try_modify(0).is_err(),
            "a stopped context accepted a timer"
        );
        assert!(runs.load(Ordering::SeqCst) <= 2);
    }
}

/// `shutdown_tasks` called from inside a task of the same context and from a BH: the
/// other tasks end cancelled, the caller's poll returns, nothing deadlocks.
#[test]
fn probe_shutdown_tasks_from_a_task_and_from_a_bh() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let parked = ctx.spawn(std::future::pending::<u32>());
    let c = Arc::clone(&ctx);
    let n = Arc::new(AtomicUsize::new(usize::MAX));
    let nn = Arc::clone(&n);
    let killer = ctx.spawn(async move {
        nn.store(c.shutdown_tasks(), Ordering::SeqCst);
        std::future::pending::<u32>().await
    });
    settle(&ctx);
    assert!(
        n.load(Ordering::SeqCst) >= 1,
        "shutdown_tasks inside a task did not return"
    );
    let other = new_ctx();
    assert!(other.block_on(parked).is_err_and(|e| e.is_cancelled()));
    assert!(other.block_on(killer).is_err_and(|e| e.is_cancelled()));

    let ctx2 = new_ctx();
    let parked = ctx2.spawn(std::future::pending::<u32>());
    settle(&ctx2);
    let c = Arc::clone(&ctx2);
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    ctx2.schedule_oneshot(move || {
        c.shutdown_tasks();
        d.store(true, Ordering::SeqCst);
    });
    while !done.load(Ordering::SeqCst) {
        ctx2.poll(true);
    }
    assert!(other.block_on(parked).is_err_and(|e| e.is_cancelled()));
}

/// `shutdown_tasks` from another thread racing wakes of a parked task.
#[test]
fn probe_shutdown_tasks_racing_wakes() {
    let _dog = common::Watchdog::arm_secs(120);
    let other = new_ctx();
    for _ in 0..100 {
        let iot = IoThread::new("probe-wake").unwrap();
        let waker: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
        let w = Arc::clone(&waker);
        let h = iot.ctx().spawn(std::future::poll_fn(move |cx| {
            *w.lock().unwrap() = Some(cx.waker().clone());
            Poll::<u32>::Pending
        }));
        common::wait_until("the task parked", || waker.lock().unwrap().is_some());
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (Arc::clone(&waker), Arc::clone(&stop));
        let waking = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(wk) = w.lock().unwrap().clone() {
                    wk.wake();
                }
            }
        });
        iot.ctx().shutdown_tasks();
        assert!(other.block_on(h).is_err_and(|e| e.is_cancelled()));
        stop.store(true, Ordering::SeqCst);
        waking.join().unwrap();
        drop(iot);
    }
}

/// An IoThread dropped while other threads schedule BHs, arm timers, spawn tasks and
/// submit reads on it: nothing hangs or crashes, and every read future resolves.
#[test]
fn probe_iothread_drop_racing_every_kind_of_work() {
    let _dog = common::Watchdog::arm_secs(120);
    let home = new_ctx();
    for _ in 0..20 {
        let iot = IoThread::new("probe-race").unwrap();
        let ctx = Arc::clone(iot.ctx());
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for k in 0..3 {
            let (c, s) = (Arc::downgrade(&ctx), Arc::clone(&stop));
            let home = Arc::clone(&home);
            workers.push(thread::spawn(move || {
                let (r, _w) = pipe();
                while !s.load(Ordering::SeqCst) {
                    let Some(c) = c.upgrade() else { break };
                    match k {
                        0 => {
                            c.schedule_oneshot(|| {});
                            let t = c.timer_new(ClockType::Realtime, || {});
                            let _ = t.try_modify(0);
                        }
                        1 => drop(c.spawn(async { aioctx::aio::yield_now().await })),
                        _ => {
                            let op = c.read_at(r.as_raw_fd(), vec![0u8; 8], 0);
                            drop(c);
                            let mut op = Box::pin(op);
                            let _ = op.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                            drop(op);
                            let _ = &home;
                        }
                    }
                }
            }));
        }
        drop(ctx);
        thread::sleep(std::time::Duration::from_millis(2));
        drop(iot);
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
    }
}

/// Polls `fut` (no blocking wait) up to a bounded number of loop turns; whether it
/// resolved. Used only where the operation can complete at once.
fn resolves_without_waiting<F: Future + Unpin>(ctx: &AioContext, fut: &mut F) -> bool {
    for _ in 0..1000 {
        if poll_once(fut, Waker::noop()).is_ready() {
            return true;
        }
        ctx.poll(false);
        thread::yield_now();
    }
    false
}

/// Two eventfds (any anon-inode files: eventfd, timerfd, signalfd, epoll) report the
/// same `(st_dev, st_ino)`. A read waits on eventfd A at number N; A's number is then
/// reused for another eventfd B, which already holds a count: a read on N must read B
/// (io_uring does) and complete at once, not join A's stream-table entry.
#[test]
fn probe_stream_read_on_a_reused_number_of_another_eventfd() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    // SAFETY: plain eventfd creation; we own the results.
    let (a, b) = unsafe {
        (
            OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)),
            OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)),
        )
    };
    let n = a.as_raw_fd();
    let mut on_a = ctx.read_at(n, vec![0u8; 8], 0);
    assert!(poll_once(&mut on_a, Waker::noop()).is_pending());
    settle(&ctx);
    write_fd(b.as_raw_fd(), &1u64.to_ne_bytes());
    // SAFETY: closes A's number and makes it name B in one step (the dropped `a` below
    // is forgotten so the number is not closed twice).
    assert_eq!(unsafe { libc::dup3(b.as_raw_fd(), n, libc::O_CLOEXEC) }, n);
    std::mem::forget(a);
    let mut on_b = ctx.read_at(n, vec![0u8; 8], 0);
    let done = resolves_without_waiting(&ctx, &mut on_b);
    // Clean up either way: wake the read on A's file (its dup), then the context.
    drop(on_b);
    drop(on_a);
    // SAFETY: `n` now names B, which we close here.
    unsafe { libc::close(n) };
    assert!(
        done,
        "a read on eventfd B (reusing A's number, B's count 1) did not complete: it waits \
         in A's stream-table entry (same anon inode)"
    );
}

/// Two reads wait on one pipe; the first is dropped: the data goes to the second.
#[test]
fn probe_first_of_two_reads_dropped_second_gets_data() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    for _ in 0..20 {
        let (r, w) = pipe();
        let mut first = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        let mut second = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut first, Waker::noop()).is_pending());
        assert!(poll_once(&mut second, Waker::noop()).is_pending());
        settle(&ctx);
        drop(first);
        settle(&ctx);
        write_fd(w.as_raw_fd(), b"two");
        let (res, buf) = ctx.block_on(second);
        assert_eq!(&buf[..res.unwrap()], b"two");
    }
}

/// Two writes wait on a full pipe; the first is dropped: once room appears only the
/// second's bytes arrive.
#[test]
fn probe_first_of_two_writes_dropped_only_second_lands() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    set_nonblocking(w.as_raw_fd());
    set_nonblocking(r.as_raw_fd());
    let mut filled = 0;
    loop {
        // SAFETY: the buffer is valid for reads of its length.
        let n = unsafe { libc::write(w.as_raw_fd(), [0u8; 4096].as_ptr().cast(), 4096) };
        if n <= 0 {
            break;
        }
        filled += n as usize;
    }
    let mut first = ctx.write_at(w.as_raw_fd(), vec![1u8; 8], 0);
    let mut second = ctx.write_at(w.as_raw_fd(), vec![2u8; 8], 0);
    assert!(poll_once(&mut first, Waker::noop()).is_pending());
    assert!(poll_once(&mut second, Waker::noop()).is_pending());
    settle(&ctx);
    drop(first);
    settle(&ctx);
    let mut got = Vec::new();
    let mut second = Some(second);
    while got.len() < filled + 8 {
        let mut buf = [0u8; 65536];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            got.extend_from_slice(&buf[..n as usize]);
        } else {
            if let Some(s) = second.as_mut()
                && let Poll::Ready((res, _)) = poll_once(s, Waker::noop())
            {
                assert_eq!(res.unwrap(), 8);
                second = None;
            }
            ctx.poll(second.is_some() && got.len() >= filled);
        }
    }
    settle(&ctx);
    while let Some(n) = try_read(r.as_raw_fd()) {
        assert_ne!(n, 0);
        got.extend(std::iter::repeat_n(9u8, n));
    }
    assert_eq!(got.len(), filled + 8, "the dropped write landed too");
    assert_eq!(&got[filled..], &[2u8; 8], "the wrong write landed");
}

/// A task returning `Ready` after calling `shutdown_tasks` on its own context keeps its
/// output; a task whose future's drop calls `shutdown_tasks` again and spawns a new
/// task on the same context does not deadlock, and the new task is cancelled.
#[test]
fn probe_shutdown_tasks_reentered_from_a_cancelled_futures_drop() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let other = new_ctx();
    let c = Arc::clone(&ctx);
    let ready = ctx.spawn(async move {
        c.shutdown_tasks();
        5u32
    });
    settle(&ctx);
    assert_eq!(
        other.block_on(ready).ok(),
        Some(5),
        "a Ready output was lost"
    );

    let ctx = new_ctx();
    struct Reenter(
        std::sync::Weak<AioContext>,
        Arc<Mutex<Option<aioctx::aio::JoinHandle<u32>>>>,
    );
    impl Drop for Reenter {
        fn drop(&mut self) {
            if let Some(c) = self.0.upgrade() {
                c.shutdown_tasks();
                *self.1.lock().unwrap() = Some(c.spawn(async { 1u32 }));
            }
        }
    }
    let late = Arc::new(Mutex::new(None));
    let guard = Reenter(Arc::downgrade(&ctx), Arc::clone(&late));
    let h = ctx.spawn(async move {
        let _g = guard;
        std::future::pending::<u32>().await
    });
    settle(&ctx);
    ctx.shutdown_tasks();
    assert!(other.block_on(h).is_err_and(|e| e.is_cancelled()));
    let late = late.lock().unwrap().take().expect("the drop ran");
    assert!(other.block_on(late).is_err_and(|e| e.is_cancelled()));
}

/// A deferred timer whose `Timer` handle is dropped inside its callback: nothing runs
/// or crashes when the outer pass puts it back.
#[test]
fn probe_deferred_timer_handle_dropped_in_its_callback() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let slot: Arc<Mutex<Option<Timer>>> = Arc::new(Mutex::new(None));
    let runs = Arc::new(AtomicUsize::new(0));
    let (c, s, n) = (Arc::downgrade(&ctx), Arc::clone(&slot), Arc::clone(&runs));
    let tm = ctx.timer_new(ClockType::Realtime, move || {
        n.fetch_add(1, Ordering::SeqCst);
        let t = s.lock().unwrap().take();
        if let Some(t) = t {
            t.modify(ClockType::Realtime.now_ns() - 1);
            c.upgrade().unwrap().poll(false);
            drop(t);
        }
    });
    tm.modify(ClockType::Realtime.now_ns() - 1);
    *slot.lock().unwrap() = Some(tm);
    ctx.poll(false);
    settle(&ctx);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "a dropped timer ran");
}

/// A timer re-armed in its callback, deferred by a nested poll, re-armed AGAIN (a
/// modify while deferred) and found due by a second nested poll: its callback must
/// still not run re-entrantly, and it runs again after the callback returned.
#[test]
fn probe_deferred_timer_modified_again_then_nested_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let timer: Arc<OnceLock<Timer>> = Arc::new(OnceLock::new());
    let depth = Arc::new(AtomicUsize::new(0));
    let reentered = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let (c, t, dp, re, n) = (
        Arc::downgrade(&ctx),
        Arc::clone(&timer),
        Arc::clone(&depth),
        Arc::clone(&reentered),
        Arc::clone(&runs),
    );
    let tm = ctx.timer_new(ClockType::Realtime, move || {
        if dp.fetch_add(1, Ordering::SeqCst) > 0 {
            re.store(true, Ordering::SeqCst);
        }
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            let timer = t.get().unwrap();
            let ctx = c.upgrade().unwrap();
            timer.modify(ClockType::Realtime.now_ns() - 1);
            ctx.poll(false);
            timer.modify(ClockType::Realtime.now_ns() - 1);
            ctx.poll(false);
            thread::scope(|s| {
                s.spawn(|| timer.modify(ClockType::Realtime.now_ns() - 1));
            });
            ctx.poll(false);
        }
        dp.fetch_sub(1, Ordering::SeqCst);
    });
    assert!(timer.set(tm).is_ok());
    timer
        .get()
        .unwrap()
        .modify(ClockType::Realtime.now_ns() - 1);
    ctx.poll(false);
    assert!(
        !reentered.load(Ordering::SeqCst),
        "the timer's callback ran re-entrantly"
    );
    assert!(
        timer.get().unwrap().pending(),
        "the re-armed timer was lost"
    );
    settle(&ctx);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A waker that, woken by an operation's completion, polls the loop (nested) and
/// submits a new operation from there.
struct SubmitOnWake {
    ctx: std::sync::Weak<AioContext>,
    fd: RawFd,
    op: Mutex<Option<aioctx::aio::RingOp<Vec<u8>>>>,
    woke: AtomicBool,
}
impl Wake for SubmitOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.woke.swap(true, Ordering::SeqCst) {
            return;
        }
        let ctx = self.ctx.upgrade().unwrap();
        ctx.poll(false);
        let mut op = ctx.read_at(self.fd, vec![0u8; 16], 0);
        assert!(poll_once(&mut op, Waker::noop()).is_pending());
        ctx.poll(false);
        *self.op.lock().unwrap() = Some(op);
    }
}

#[test]
fn probe_submit_and_nested_poll_inside_a_completion_wake() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let hook = Arc::new(SubmitOnWake {
        ctx: Arc::downgrade(&ctx),
        fd: r2.as_raw_fd(),
        op: Mutex::new(None),
        woke: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&hook));
    let mut a = ctx.read_at(r1.as_raw_fd(), vec![0u8; 16], 0);
    assert!(poll_once(&mut a, &waker).is_pending());
    settle(&ctx);
    write_fd(w1.as_raw_fd(), b"a");
    while hook.op.lock().unwrap().is_none() {
        ctx.poll(true);
    }
    write_fd(w2.as_raw_fd(), b"b");
    let op = hook.op.lock().unwrap().take().unwrap();
    let (res, buf) = ctx.block_on(op);
    assert_eq!(&buf[..res.unwrap()], b"b");
}

/// The same class with pty masters: every master opened from `/dev/ptmx` reports the
/// ptmx `(st_dev, st_ino)`.
#[test]
fn probe_stream_read_on_a_reused_number_of_another_pty_master() {
    fn open_master() -> (OwnedFd, OwnedFd) {
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname on a master we own; the slave
        // path is copied before any other pty call.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0);
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
            let s = libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(s >= 0);
            (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s))
        }
    }
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (ma, _sa) = open_master();
    let (mb, sb) = open_master();
    let n = ma.as_raw_fd();
    let mut on_a = ctx.read_at(n, vec![0u8; 64], 0);
    assert!(poll_once(&mut on_a, Waker::noop()).is_pending());
    settle(&ctx);
    write_fd(sb.as_raw_fd(), b"x\n");
    // The line discipline hands the bytes to the master asynchronously: wait (no
    // timeout; the watchdog covers) until B's master is readable.
    let mut pfd = libc::pollfd {
        fd: mb.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, -1) }, 1);
    // SAFETY: closes A's number and makes it name B's master in one step.
    assert_eq!(unsafe { libc::dup3(mb.as_raw_fd(), n, libc::O_CLOEXEC) }, n);
    std::mem::forget(ma);
    let mut on_b = ctx.read_at(n, vec![0u8; 64], 0);
    let mut done = false;
    for _ in 0..1000 {
        if poll_once(&mut on_b, Waker::noop()).is_ready() {
            done = true;
            break;
        }
        ctx.poll(false);
        thread::yield_now();
    }
    drop(on_b);
    drop(on_a);
    // SAFETY: `n` now names B's master, which we close here.
    unsafe { libc::close(n) };
    assert!(
        done,
        "a read on pty master B (reusing A's number, data pending) did not complete"
    );
}

/// Control for the two probes above: without the number reuse, a read on an eventfd
/// with a count completes at once on both back ends.
#[test]
fn probe_stream_read_on_an_eventfd_with_a_count() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    // SAFETY: plain eventfd creation; we own the results.
    let (a, b) = unsafe {
        (
            OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)),
            OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)),
        )
    };
    let mut on_a = ctx.read_at(a.as_raw_fd(), vec![0u8; 8], 0);
    assert!(poll_once(&mut on_a, Waker::noop()).is_pending());
    settle(&ctx);
    write_fd(b.as_raw_fd(), &1u64.to_ne_bytes());
    let mut on_b = ctx.read_at(b.as_raw_fd(), vec![0u8; 8], 0);
    assert!(resolves_without_waiting(&ctx, &mut on_b));
    drop(on_a);
}

/// Deleted from another thread while deferred, then the callback panics: the unwind
/// must not put the deleted timer back.
#[test]
fn probe_deferred_timer_deleted_then_callback_panics() {
    let d = deferred_timer(|timer, run| {
        if run == 0 {
            thread::scope(|s| {
                s.spawn(|| timer.delete());
            });
            panic!("probe: panic after a delete while deferred");
        }
    });
    let _dog = Watchdog::on_ctx(&d.ctx);
    assert!(catch_unwind(AssertUnwindSafe(|| d.ctx.poll(false))).is_err());
    assert!(
        !d.timer.get().unwrap().pending(),
        "the unwind re-armed a deleted timer"
    );
    settle(&d.ctx);
    assert_eq!(d.runs.load(Ordering::SeqCst), 1, "a deleted timer ran");
}

/// A read on an empty NONBLOCKING pipe (EAGAIN, resubmitted up to `MAX_RETRIES`) dropped
/// from another thread while it retries: no hang, no use after free (ASan), and data
/// written afterwards reaches a new reader.
#[test]
fn probe_read_dropped_off_home_while_it_retries_eagain() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    for i in 0..100 {
        let (r, w) = pipe();
        set_nonblocking(r.as_raw_fd());
        let mut op = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut op, Waker::noop()).is_pending());
        for _ in 0..(i % 5) {
            ctx.poll(false);
        }
        let go = Arc::new(AtomicBool::new(false));
        let g = Arc::clone(&go);
        let t = thread::spawn(move || {
            while !g.load(Ordering::SeqCst) {}
            drop(op);
        });
        go.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            ctx.poll(false);
        }
        t.join().unwrap();
        settle(&ctx);
        write_fd(w.as_raw_fd(), b"fresh");
        let (res, buf) = ctx.block_on(ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0));
        match res {
            Ok(n) => assert_eq!(&buf[..n], b"fresh"),
            Err(e) => panic!("the new read failed: {e}"),
        }
    }
}

/// After an `IoThread` stopped (its context kept alive by an `Arc`), every kind of new
/// work is refused and its callback freed at once (nothing keeps a captured value).
#[test]
fn probe_work_after_iothread_stop_is_refused_and_freed() {
    let iot = IoThread::new("probe-stopped").unwrap();
    let ctx = Arc::clone(iot.ctx());
    let _dog = Watchdog::on_ctx(&ctx);
    let bh = ctx.bh_new(|| {});
    let timer = ctx.timer_new(ClockType::Realtime, || {});
    drop(iot);
    let token = Arc::new(());
    let (r, _w) = pipe();
    let t = Arc::clone(&token);
    ctx.schedule_oneshot(move || drop(t));
    let t = Arc::clone(&token);
    let t2 = Arc::clone(&token);
    let res = ctx.set_fd_handler(
        r.as_raw_fd(),
        Some(Box::new(move || {
            let _ = &t;
        })),
        Some(Box::new(move || {
            let _ = &t2;
        })),
    );
    assert!(
        res.is_err(),
        "set_fd_handler on a stopped context was accepted"
    );
    let t = Arc::clone(&token);
    let late_timer = ctx.timer_new(ClockType::Realtime, move || {
        let _ = &t;
    });
    assert!(late_timer.try_modify(0).is_err());
    let t = Arc::clone(&token);
    let late_bh = ctx.bh_new(move || {
        let _ = &t;
    });
    assert!(late_bh.try_schedule().is_err());
    assert!(bh.try_schedule().is_err());
    assert!(timer.try_modify(0).is_err());
    let t = Arc::clone(&token);
    let h = ctx.spawn(async move {
        let _ = &t;
    });
    let other = new_ctx();
    assert!(other.block_on(h).is_err_and(|e| e.is_cancelled()));
    // The live `late_timer` and `late_bh` may keep their callbacks until dropped.
    assert!(
        Arc::strong_count(&token) <= 3,
        "a refused callback kept its captures"
    );
    drop((late_timer, late_bh));
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "a dead timer or BH kept its callback"
    );
}

/// An `IoThread` dropped from inside one of its own tasks (the task owns it): the
/// thread stops, closes its context, and the other tasks end cancelled.
#[test]
fn probe_iothread_dropped_from_its_own_task() {
    let _dog = common::Watchdog::arm_secs(60);
    let other = new_ctx();
    for _ in 0..20 {
        let iot = IoThread::new("probe-selfdrop").unwrap();
        let ctx = Arc::downgrade(iot.ctx());
        let parked = iot.ctx().spawn(std::future::pending::<u32>());
        let owner = Arc::new(Mutex::new(None::<IoThread>));
        let o = Arc::clone(&owner);
        let spawner = Arc::clone(iot.ctx());
        *owner.lock().unwrap() = Some(iot);
        let killer = spawner.spawn(async move {
            let iot = o.lock().unwrap().take();
            drop(iot);
            aioctx::aio::yield_now().await;
            3u32
        });
        drop(spawner);
        assert!(other.block_on(parked).is_err_and(|e| e.is_cancelled()));
        let _ = other.block_on(killer);
        common::wait_until("the context is freed", || ctx.upgrade().is_none());
    }
}

/// A waker that, woken when its read is cancelled by the context's shutdown, submits a
/// new read on the same context (on its home thread, from the completion).
struct SubmitOnCancel {
    ctx: std::sync::Weak<AioContext>,
    fd: RawFd,
    op: Mutex<Option<aioctx::aio::RingOp<Vec<u8>>>>,
    woke: AtomicBool,
}
impl Wake for SubmitOnCancel {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.woke.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(ctx) = self.ctx.upgrade() {
            let mut op = ctx.read_at(self.fd, vec![0u8; 16], 0);
            let _ = poll_once(&mut op, Waker::noop());
            *self.op.lock().unwrap() = Some(op);
        }
    }
}

/// An `IoThread` stops with a read in flight; the read's completion (run by the
/// shutdown, after the ring was shut down) wakes a waker that submits a new read on the
/// same, still alive, context. Nobody will ever poll that context again, so the new read
/// must be refused (ECANCELED) — not queued on the shut-down ring, where it waits
/// unseen until the context's last `Arc` goes.
#[test]
fn probe_read_submitted_from_a_completion_run_by_the_shutdown() {
    let iot = IoThread::new("probe-late-submit").unwrap();
    let ctx = Arc::clone(iot.ctx());
    let _dog = Watchdog::on_ctx(&ctx);
    let (r1, _w1) = pipe();
    let (r2, w2) = pipe();
    let hook = Arc::new(SubmitOnCancel {
        ctx: Arc::downgrade(&ctx),
        fd: r2.as_raw_fd(),
        op: Mutex::new(None),
        woke: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&hook));
    let mut a = ctx.read_at(r1.as_raw_fd(), vec![0u8; 16], 0);
    assert!(poll_once(&mut a, &waker).is_pending());
    // Wait until the IoThread pushed it (the hand-over BH ran): a no-op round trip.
    let (tx, rx) = std::sync::mpsc::channel();
    ctx.schedule_oneshot(move || tx.send(()).unwrap());
    rx.recv().unwrap();
    drop(iot);
    assert!(
        hook.woke.load(Ordering::SeqCst),
        "the shutdown did not complete the read"
    );
    let mut b = hook
        .op
        .lock()
        .unwrap()
        .take()
        .expect("the waker submitted a read");
    write_fd(w2.as_raw_fd(), b"late");
    let state = poll_once(&mut b, Waker::noop());
    let stuck = state.is_pending();
    drop(b);
    drop(a);
    drop(ctx);
    assert!(
        !stuck,
        "a read submitted on the home thread after the shutdown is pending on a context \
         nobody will poll again"
    );
}
