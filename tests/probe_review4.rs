//! Review probes (fourth round): the split run queue's injection queue racing a home
//! thread that sleeps inside a task's nested `block_on` ([RQ2]/[RQ6]), `block_on`'s
//! same-thread wake flag set from callbacks of the poll it sleeps in and cross-thread
//! wakes every round ([RQ8]), join wakers replaced while tasks complete ([TK9]), timers
//! armed from another thread against the hint ([T7]), fixed buffers of dropped,
//! deadlined and cancelled `FileOp`s kept out of their pool until the final completion,
//! a registered entry reused only after the operation on it completed, deadlines racing
//! pipe data, a context with its table, registered file, pool and pending operation
//! dropped in every order, panicking oneshots ([BH10]) and detached tasks ([PO4]) over
//! the new queues, and `make_current` inside `block_on` and inside a task ([CU1]). Each
//! has a watchdog; the suite runs on io_uring and again with `AIOCTX_BACKEND=epoll`
//! (and `AIOCTX_RING_SETUP=defer_taskrun`).
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aioctx::aio::{AioContext, ClockType, File, FixedBufPool, FixedFileTable};
use common::{Watchdog, new_ctx, pipe, poll_once, wait_until, write_fd};

/// Ready once `count` reaches `n`; parks its waker in `slot` otherwise.
struct UntilCount {
    count: Arc<AtomicUsize>,
    slot: Arc<Mutex<Option<Waker>>>,
    n: usize,
}

impl Future for UntilCount {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.slot.lock().unwrap() = Some(cx.waker().clone());
        if self.count.load(Ordering::Acquire) >= self.n {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Tasks spawned from other threads, each waking a task of the same context that waits
/// in a nested `block_on` (so its home thread sleeps in the nested loop while the
/// injection queue fills): every spawned task runs, none is left behind a sleep.
#[test]
fn cross_thread_spawns_reach_a_task_waiting_in_a_nested_block_on() {
    const THREADS: usize = 2;
    const PER: usize = 400;
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("spawns_vs_nested_block_on", &ctx);
    let count = Arc::new(AtomicUsize::new(0));
    let slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let waiter = {
        let (c, count, slot) = (Arc::clone(&ctx), Arc::clone(&count), Arc::clone(&slot));
        ctx.spawn(async move {
            c.block_on(UntilCount {
                count,
                slot,
                n: THREADS * PER,
            });
        })
    };
    let go = Arc::new(AtomicBool::new(false));
    let spawners: Vec<_> = (0..THREADS)
        .map(|_| {
            let (c, count, slot, go) = (
                Arc::clone(&ctx),
                Arc::clone(&count),
                Arc::clone(&slot),
                Arc::clone(&go),
            );
            std::thread::spawn(move || {
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                for i in 0..PER {
                    let (count, slot) = (Arc::clone(&count), Arc::clone(&slot));
                    drop(c.spawn(async move {
                        count.fetch_add(1, Ordering::AcqRel);
                        if let Some(w) = slot.lock().unwrap().take() {
                            w.wake();
                        }
                    }));
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    go.store(true, Ordering::Release);
    ctx.block_on(waiter).unwrap();
    for s in spawners {
        s.join().unwrap();
    }
    assert_eq!(count.load(Ordering::Acquire), THREADS * PER);
}

/// `block_on`'s future woken on its own thread by a oneshot, a BH, a timer and an fd
/// handler of the poll that `block_on` runs ([RQ8]: the flag and the home-thread
/// notify): the loop never sleeps through the wake.
#[test]
fn block_on_woken_by_callbacks_of_its_own_poll() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("block_on_self_wakes", &ctx);
    let slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let wake_slot = {
        let slot = Arc::clone(&slot);
        move || {
            if let Some(w) = slot.lock().unwrap().take() {
                w.wake();
            }
        }
    };
    let bh = ctx.bh_new(wake_slot.clone());
    let timer = ctx.timer_new(ClockType::Realtime, wake_slot.clone());
    let (r, w) = pipe();
    let fd = {
        use std::os::fd::AsRawFd;
        r.as_raw_fd()
    };
    let handler_wake = wake_slot.clone();
    ctx.set_fd_handler(
        fd,
        Some(Box::new(move || {
            let mut b = [0u8; 64];
            // SAFETY: `b` is a valid buffer of its length for the read.
            unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
            handler_wake();
        })),
        None,
    )
    .unwrap();
    for round in 0..2000u32 {
        let mut armed = false;
        let (c, s) = (Arc::clone(&ctx), Arc::clone(&slot));
        let bh = &bh;
        let timer = &timer;
        let w = &w;
        let ws = wake_slot.clone();
        ctx.block_on(std::future::poll_fn(move |cx| {
            if armed {
                return Poll::Ready(());
            }
            armed = true;
            *s.lock().unwrap() = Some(cx.waker().clone());
            match round % 4 {
                0 => c.schedule_oneshot(ws.clone()),
                1 => bh.schedule(),
                2 => timer.modify(0),
                _ => {
                    use std::os::fd::AsRawFd;
                    write_fd(w.as_raw_fd(), b"x");
                }
            }
            Poll::Pending
        }));
    }
    ctx.set_fd_handler(fd, None, None).unwrap();
}

/// A pending `read_fixed_at` on an empty pipe, dropped in each way — plain drop, after
/// its cancel handle fired, with a deadline not reached yet — keeps its buffer out of
/// the pool until its final completion: the pool's one buffer is not handed out while
/// the kernel may still write it.
#[test]
fn fixed_buffer_of_a_dropped_file_op_returns_after_the_completion() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("fixed_buf_drop_orders", &ctx);
    let pool = FixedBufPool::new(&ctx, 1, 4096).unwrap();
    for mode in 0..3 {
        let (r, w) = pipe();
        let file = File::from_owned_fd(&ctx, r);
        let buf = pool.try_get().unwrap();
        let mut op = file.read_fixed_at(buf, 0);
        if mode == 2 {
            op = op.with_deadline(Duration::from_secs(3600));
        }
        let cancel = op.cancel_handle();
        let mut op = Box::pin(op);
        assert!(poll_once(&mut op).is_pending(), "mode {mode}");
        ctx.poll(false);
        if mode == 1 {
            cancel.cancel();
        }
        drop(op);
        drop(file);
        // Whatever the back end did synchronously, a buffer back in the pool now must
        // not be one the kernel may still fill: a write to the pipe then must not
        // reach it.
        if let Some(mut again) = pool.try_get() {
            again.set_len(0);
            use std::os::fd::AsRawFd;
            write_fd(w.as_raw_fd(), b"late data");
            for _ in 0..10 {
                ctx.poll(false);
            }
            assert!(
                !again.starts_with(b"late"),
                "mode {mode}: a buffer back in the pool was written by the dropped read"
            );
            drop(again);
        }
        wait_until("the fixed buffer to come back", || {
            ctx.poll(false);
            pool.available() == 1
        });
        drop(w);
    }
}

/// A registered pipe read in flight, its `File` unregistered and dropped: the entry is
/// not handed to a newly registered file until the read completed, and the new file's
/// operations reach the new file.
#[test]
fn registered_entry_busy_until_the_read_on_it_completes() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("registered_entry_reuse", &ctx);
    let Ok(table) = FixedFileTable::new(&ctx, 1) else {
        common::say_skipped("registered_entry_busy_until_the_read_on_it_completes: no table");
        return;
    };
    let (r, w) = pipe();
    let mut file = File::from_owned_fd(&ctx, r);
    file.register(&table).unwrap();
    let mut op = Box::pin(file.read_at(vec![0u8; 16], 0));
    assert!(poll_once(&mut op).is_pending());
    ctx.poll(false);
    drop(file);
    let (r2, w2) = pipe();
    let mut file2 = File::from_owned_fd(&ctx, r2);
    if table.is_registered() {
        assert!(
            file2.register(&table).is_err(),
            "the entry was given out while a read on it was in flight"
        );
    }
    use std::os::fd::AsRawFd;
    write_fd(w.as_raw_fd(), b"first");
    let (res, buf) = ctx.block_on(op);
    assert_eq!(&buf[..res.unwrap()], b"first");
    wait_until("the entry to come back", || {
        ctx.poll(false);
        table.available() == 1
    });
    file2.register(&table).unwrap();
    write_fd(w2.as_raw_fd(), b"second");
    let (res, buf) = ctx.block_on(file2.read_at(vec![0u8; 16], 0));
    assert_eq!(&buf[..res.unwrap()], b"second");
}

/// Oneshots scheduled on the home thread, one in three panicking, while another thread
/// schedules oneshots all along ([BH10]'s refill racing cross-thread pushes, [BH9]):
/// every oneshot runs exactly once.
#[test]
fn panicking_home_oneshots_racing_remote_oneshots_run_once_each() {
    const HOME: usize = 3000;
    const REMOTE: usize = 3000;
    let ctx: Arc<AioContext> = new_ctx();
    let _dog = Watchdog::for_ctx("oneshot_panics_vs_remote", &ctx);
    let ran_home = Arc::new(AtomicUsize::new(0));
    let ran_remote = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&ctx);
    let rr = Arc::clone(&ran_remote);
    ctx.poll(false); // bind the home thread
    let remote = std::thread::spawn(move || {
        for _ in 0..REMOTE {
            let rr = Arc::clone(&rr);
            c.schedule_oneshot(move || {
                rr.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    for i in 0..HOME {
        let rh = Arc::clone(&ran_home);
        ctx.schedule_oneshot(move || {
            rh.fetch_add(1, Ordering::Relaxed);
            if i % 3 == 0 {
                panic!("probe oneshot {i}");
            }
        });
        if i % 7 == 0 {
            let _ = catch_unwind(AssertUnwindSafe(|| ctx.poll(false)));
        }
    }
    remote.join().unwrap();
    wait_until("every oneshot to run", || {
        let _ = catch_unwind(AssertUnwindSafe(|| ctx.poll(false)));
        ran_home.load(Ordering::Relaxed) >= HOME && ran_remote.load(Ordering::Relaxed) >= REMOTE
    });
    for _ in 0..4 {
        let _ = catch_unwind(AssertUnwindSafe(|| ctx.poll(false)));
    }
    assert_eq!(ran_home.load(Ordering::Relaxed), HOME);
    assert_eq!(ran_remote.load(Ordering::Relaxed), REMOTE);
}

/// Wakes a parked thread; `woken` says whether this waker was woken.
struct Unpark {
    thread: std::thread::Thread,
    woken: AtomicBool,
}

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

fn unpark_waker() -> (Arc<Unpark>, Waker) {
    let u = Arc::new(Unpark {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
    (Arc::clone(&u), Waker::from(u))
}

/// Join handles polled off the home thread, each poll with a fresh waker (replacing
/// the one the task holds, [TK9]) while the task completes on an `IoThread`: the last
/// waker given is always woken; handles dropped mid-race detach cleanly.
#[test]
fn join_wakers_replaced_while_tasks_complete_on_an_iothread() {
    let io = aioctx::aio::IoThread::new("probe-join").unwrap();
    let ctx = Arc::clone(io.ctx());
    let _dog = Watchdog::for_ctx("join_waker_replace", &ctx);
    for i in 0..3000u32 {
        let mut h = ctx.spawn(async move {
            aioctx::aio::yield_now().await;
            i
        });
        if i % 5 == 4 {
            let (_, w) = unpark_waker();
            let _ = Pin::new(&mut h).poll(&mut Context::from_waker(&w));
            drop(h);
            continue;
        }
        loop {
            let (first, w1) = unpark_waker();
            if let Poll::Ready(v) = Pin::new(&mut h).poll(&mut Context::from_waker(&w1)) {
                assert_eq!(v.unwrap(), i);
                break;
            }
            let (second, w2) = unpark_waker();
            if let Poll::Ready(v) = Pin::new(&mut h).poll(&mut Context::from_waker(&w2)) {
                assert_eq!(v.unwrap(), i);
                break;
            }
            // Only the second waker counts now; the first may or may not be woken.
            let _ = &first;
            while !second.woken.load(Ordering::Acquire) {
                std::thread::park();
            }
        }
    }
}

/// `block_on` on the home thread woken from another thread at every step, racing the
/// loop's fast path (the woken flag read before the blocking poll, [RQ8]): thousands of
/// rounds, none sleeps through its wake.
#[test]
fn block_on_woken_from_another_thread_every_round() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("block_on_cross_wakes", &ctx);
    let slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, stop2) = (Arc::clone(&slot), Arc::clone(&stop));
    let waker_thread = std::thread::spawn(move || {
        while !stop2.load(Ordering::Acquire) {
            if let Some(w) = s2.lock().unwrap().take() {
                w.wake();
            } else {
                std::hint::spin_loop();
            }
        }
    });
    for _ in 0..5000 {
        let mut parked = false;
        let s = Arc::clone(&slot);
        ctx.block_on(std::future::poll_fn(move |cx| {
            if parked && s.lock().unwrap().is_none() {
                return Poll::Ready(());
            }
            parked = true;
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }));
    }
    stop.store(true, Ordering::Release);
    waker_thread.join().unwrap();
}

/// Reads of a pipe with deadlines of a few microseconds, the data written right after
/// submission (the deadline races the data): each read either gets the next bytes in
/// order or times out/is cancelled leaving them in the pipe — no byte is lost or read
/// twice. Plain buffers on a plain file, fixed buffers on a registered file.
#[test]
fn deadline_racing_data_loses_no_byte() {
    use std::os::fd::AsRawFd;
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("deadline_vs_data", &ctx);
    let table = FixedFileTable::new(&ctx, 2).ok();
    let pool = FixedBufPool::new(&ctx, 2, 4096).ok();
    for registered in [false, true] {
        let (r, w) = pipe();
        let mut file = File::from_owned_fd(&ctx, r);
        if registered && let Some(t) = &table {
            file.register(t).unwrap();
        }
        let mut expected: std::collections::VecDeque<u8> = Default::default();
        // Writes each byte after a spin of the given length (racing the deadline).
        let (tx, rx) = std::sync::mpsc::channel::<(u8, u32)>();
        let wfd = w.as_raw_fd();
        let writer = std::thread::spawn(move || {
            for (byte, spin) in rx {
                for _ in 0..spin {
                    std::hint::spin_loop();
                }
                write_fd(wfd, &[byte]);
            }
        });
        let mut timed_out = 0;
        for round in 0..600u32 {
            let spin = (round * 37) % 20_000;
            let after = Duration::from_micros(u64::from(round % 40));
            let byte = (round % 251) as u8;
            let got: (std::io::Result<usize>, Vec<u8>) = match (&pool, registered) {
                (Some(pool), true) => {
                    let buf = pool.try_get().expect("a free fixed buffer");
                    let mut op = Box::pin(file.read_fixed_at(buf, 0).with_deadline(after));
                    let first = poll_once(&mut op);
                    tx.send((byte, spin)).unwrap();
                    expected.push_back(byte);
                    let (res, buf) = match first {
                        Poll::Ready(out) => out,
                        Poll::Pending => ctx.block_on(op),
                    };
                    (res, buf.to_vec())
                }
                _ => {
                    let mut op = Box::pin(file.read_at(vec![0u8; 4096], 0).with_deadline(after));
                    let first = poll_once(&mut op);
                    tx.send((byte, spin)).unwrap();
                    expected.push_back(byte);
                    match first {
                        Poll::Ready(out) => out,
                        Poll::Pending => ctx.block_on(op),
                    }
                }
            };
            match got.0 {
                Ok(n) => {
                    for (i, b) in got.1[..n].iter().enumerate() {
                        assert_eq!(
                            Some(*b),
                            expected.pop_front(),
                            "round {round} (registered {registered}): byte {i} of {n}"
                        );
                    }
                }
                Err(e) => {
                    timed_out += 1;
                    assert!(
                        e.kind() == std::io::ErrorKind::TimedOut
                            || e.raw_os_error() == Some(libc::ECANCELED),
                        "round {round}: {e}"
                    );
                }
            }
        }
        drop(tx);
        writer.join().unwrap();
        eprintln!(
            "registered {registered}: {timed_out} timed out, {} bytes left for the final reads",
            expected.len()
        );
        // What is left in the pipe is exactly what no read reported.
        let mut rest = Vec::new();
        while rest.len() < expected.len() {
            let (res, buf) = ctx.block_on(file.read_at(vec![0u8; 4096], 0));
            rest.extend_from_slice(&buf[..res.unwrap()]);
        }
        assert_eq!(rest, Vec::from(expected), "registered {registered}");
        drop(w);
    }
}

/// Which context is current: `None`, or whether it is `a`.
fn current_is(a: &Arc<AioContext>) -> Option<bool> {
    aioctx::aio::try_current().map(|c| Arc::ptr_eq(&c, a))
}

/// A task of `a` (current on its thread) calls `b.make_current()`: refused with a
/// panic (resumed in the task's awaiter), so a later task of `a` in the same drain,
/// and the thread after the drain, still have `a` current ([CU1]). (Before the refusal, the
/// drain's single enter let the next tasks see `b` as their context, and with `a`
/// current already `b` stayed current for good.)
#[test]
fn make_current_in_a_task_is_refused_and_leaks_into_no_other_task() {
    let (t1, seen_t2, after) = std::thread::spawn(|| {
        let a = new_ctx();
        let b = new_ctx();
        let _dog = Watchdog::for_ctx("make_current_in_task", &a);
        a.make_current();
        b.poll(false); // b's home is this thread too
        let b2 = Arc::clone(&b);
        let t1 = a.spawn(async move {
            b2.make_current();
        });
        let a2 = Arc::clone(&a);
        let t2 = a.spawn(async move { current_is(&a2) });
        a.poll(false);
        let after = current_is(&a);
        let seen_t2 = a.block_on(t2).unwrap();
        // The task's panic resumes in its awaiter.
        let t1 = catch_unwind(AssertUnwindSafe(|| a.block_on(t1)))
            .map(|r| r.is_ok())
            .map_err(|p| common::panic_message(&*p));
        (t1, seen_t2, after)
    })
    .join()
    .unwrap();
    let msg = t1.expect_err("make_current inside a task did not panic");
    assert!(msg.contains("inside a task"), "{msg}");
    assert_eq!(seen_t2, Some(true), "the second task's current context");
    assert_eq!(after, Some(true), "after the drain");
}

/// `make_current` inside `block_on`, with and without the context current before: what
/// is current afterwards (as `enter_current` documents: the call outlasts the
/// `block_on` only when its context was current already; otherwise the `block_on`
/// restores what was current before it).
#[test]
fn make_current_inside_block_on_nesting() {
    std::thread::spawn(|| {
        let a = new_ctx();
        let b = new_ctx();
        let _dog = Watchdog::for_ctx("make_current_nesting", &a);
        b.poll(false);
        let b2 = Arc::clone(&b);
        a.block_on(async move {
            b2.make_current();
        });
        assert_eq!(current_is(&a), None, "nothing was current before");
        a.make_current();
        let b2 = Arc::clone(&b);
        a.block_on(async move {
            b2.make_current();
        });
        assert_eq!(current_is(&a), Some(false), "a was current before: b stays");
        assert!(Arc::ptr_eq(&aioctx::aio::current(), &b));
    })
    .join()
    .unwrap();
}

/// A context, its file table, a registered pipe `File`, a fixed-buffer pool and a
/// pending deadlined `read_fixed_at` of that file (its cancel handle fired or not),
/// dropped in every order: nothing hangs or crashes, and once the context is gone the
/// pipe's writer sees the read end closed (the kernel let go of the file).
#[test]
fn context_table_file_pool_and_op_dropped_in_every_order() {
    use std::os::fd::AsRawFd;
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }
    let _dog = Watchdog::arm_secs(60);
    for (round, order) in permutations(5).into_iter().enumerate() {
        let ctx = new_ctx();
        let table = FixedFileTable::new(&ctx, 1).ok();
        let pool = FixedBufPool::new(&ctx, 1, 4096).unwrap();
        let (r, w) = pipe();
        let mut file = File::from_owned_fd(&ctx, r);
        if let Some(t) = &table {
            file.register(t).unwrap();
        }
        let op = file
            .read_fixed_at(pool.try_get().unwrap(), 0)
            .with_deadline(Duration::from_secs(3600));
        let cancel = op.cancel_handle();
        let mut op = Box::pin(op);
        assert!(poll_once(&mut op).is_pending());
        ctx.poll(false);
        if round % 2 == 1 {
            cancel.cancel();
        }
        let mut ctx = Some(ctx);
        let mut table = Some(table);
        let mut file = Some(file);
        let mut pool = Some(pool);
        let mut op = Some(op);
        for &i in &order {
            match i {
                0 => drop(ctx.take()),
                1 => drop(table.take()),
                2 => drop(file.take()),
                3 => drop(pool.take()),
                _ => drop(op.take()),
            }
        }
        // Every handle is gone: the read end gets closed (the ring's teardown, which
        // frees its file table, is asynchronous in the kernel), so a write fails.
        wait_until(&format!("order {order:?}: the read end to close"), || {
            // SAFETY: a valid fd and a one-byte buffer.
            unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) == -1 }
        });
        drop(cancel);
    }
}

/// A timer armed from another thread, round after round, each time while the home
/// thread waits in `block_on` for its callback with no other timer armed (the
/// earliest-deadline hint read before the lock, [T7]): every arming is run.
#[test]
fn timers_armed_from_another_thread_while_home_waits_all_run() {
    const ROUNDS: usize = 2000;
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("cross_thread_timer_arms", &ctx);
    let count = Arc::new(AtomicUsize::new(0));
    let slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let timer = {
        let (count, slot) = (Arc::clone(&count), Arc::clone(&slot));
        Arc::new(ctx.timer_new(ClockType::Realtime, move || {
            count.fetch_add(1, Ordering::AcqRel);
            if let Some(w) = slot.lock().unwrap().take() {
                w.wake();
            }
        }))
    };
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let t = Arc::clone(&timer);
    let armer = std::thread::spawn(move || {
        for spin in rx {
            for _ in 0..spin {
                std::hint::spin_loop();
            }
            t.modify(ClockType::Realtime.now_ns());
        }
    });
    for round in 0..ROUNDS {
        tx.send((round as u32 * 53) % 5000).unwrap();
        ctx.block_on(UntilCount {
            count: Arc::clone(&count),
            slot: Arc::clone(&slot),
            n: round + 1,
        });
    }
    drop(tx);
    armer.join().unwrap();
    assert_eq!(count.load(Ordering::Acquire), ROUNDS);
}

/// Detached tasks that panic while the home queue and the injection queue both hold
/// tasks ([PO4] over [RQ6]): each `poll` that unwinds is caught, and every other task
/// runs exactly once on the next polls.
#[test]
fn panicking_detached_tasks_between_home_and_injected_tasks() {
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("panics_over_split_queue", &ctx);
    ctx.poll(false); // bind the home thread (and the run queue's at its first drain)
    let ran = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&ctx);
    let r2 = Arc::clone(&ran);
    // Home-queue tasks (spawned on the home thread, inside a drain) and injected ones;
    // nothing runs before the loop below.
    c.spawn(async move {
        let c = aioctx::aio::current();
        for i in 0..60 {
            let r = Arc::clone(&r2);
            c.spawn(async move {
                if i % 10 == 0 {
                    panic!("probe task {i}");
                }
                r.fetch_add(1, Ordering::Relaxed);
            })
            .detach();
        }
    })
    .detach();
    let c = Arc::clone(&ctx);
    let r3 = Arc::clone(&ran);
    std::thread::spawn(move || {
        for i in 0..60 {
            let r = Arc::clone(&r3);
            c.spawn(async move {
                if i % 15 == 0 {
                    panic!("probe injected task {i}");
                }
                r.fetch_add(1, Ordering::Relaxed);
            })
            .detach();
        }
    })
    .join()
    .unwrap();
    let mut panics = 0;
    wait_until("every task to run", || {
        if catch_unwind(AssertUnwindSafe(|| ctx.poll(false))).is_err() {
            panics += 1;
        }
        ran.load(Ordering::Relaxed) == 54 + 56
    });
    for _ in 0..4 {
        assert!(catch_unwind(AssertUnwindSafe(|| ctx.poll(false))).is_ok());
    }
    assert_eq!(ran.load(Ordering::Relaxed), 54 + 56);
    assert_eq!(panics, 6 + 4);
}
