//! Multishot raw operations through a kept handler (`submit_raw_handler`): the handler
//! gets one CQE per event while `IORING_CQE_F_MORE` is set, then a last one; the loop
//! keeps its reference (and what the handler owns) until that last CQE; `cancel_raw`
//! and the context's drop end the operation cleanly; a panicking handler leaves the
//! operation armed. Nested in a callback, inside a task, racing a cancel, with the
//! context dropped under it; on epoll, the call is refused and the handler released.
#![cfg(not(loom))]

mod common;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};
use std::thread;

use aioctx::aio::io_uring::{cqueue, opcode, squeue, types};
use aioctx::aio::{AioContext, Backend, CompletionHandler, RawOp};
use common::Watchdog;

/// Records every CQE; drains the pipe `drain` names (so the next write is a new
/// event); wakes a waiting task; may panic on chosen CQEs or cancel itself.
#[derive(Default)]
struct Rec {
    cqes: Mutex<Vec<(i32, u32)>>,
    waker: Mutex<Option<Waker>>,
    drain: Option<i32>,
    panic_on: Option<usize>,
    /// Cancel `op` from inside the handler once this many CQEs arrived.
    cancel_at: Option<usize>,
    ctx: Mutex<Weak<AioContext>>,
    op: Mutex<Option<RawOp>>,
    /// A multishot TIMEOUT's timespec: the handler owns what the entry names.
    ts: types::Timespec,
}

impl CompletionHandler for Rec {
    fn complete(&self, res: i32, flags: u32) {
        if let Some(fd) = self.drain {
            let mut b = [0u8; 64];
            // SAFETY: `b` is a valid buffer of 64 bytes; the pipe is non-blocking.
            unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
        }
        let n = {
            let mut cqes = self.cqes.lock().unwrap();
            cqes.push((res, flags));
            cqes.len()
        };
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
        if self.cancel_at == Some(n) {
            let ctx = self.ctx.lock().unwrap().upgrade().expect("context alive");
            ctx.cancel_raw(self.op.lock().unwrap().expect("op recorded"));
        }
        if self.panic_on == Some(n) {
            panic!("handler panics on CQE {n}");
        }
    }
}

impl Rec {
    fn len(&self) -> usize {
        self.cqes.lock().unwrap().len()
    }
    fn cqes(&self) -> Vec<(i32, u32)> {
        self.cqes.lock().unwrap().clone()
    }
    fn last_is_final(&self) -> bool {
        self.cqes
            .lock()
            .unwrap()
            .last()
            .is_some_and(|&(_, f)| !cqueue::more(f))
    }
}

/// Checks the CQE stream: every CQE but the last has F_MORE, the last has not and
/// carries `last_res`.
fn assert_stream(rec: &Rec, last_res: i32) {
    let cqes = rec.cqes();
    let (last, more) = cqes.split_last().expect("at least the last CQE");
    assert!(
        more.iter().all(|&(_, f)| cqueue::more(f)),
        "a CQE before the last lacks F_MORE: {cqes:?}"
    );
    assert!(!cqueue::more(last.1), "the last CQE has F_MORE: {cqes:?}");
    assert_eq!(last.0, last_res, "the last CQE: {cqes:?}");
}

/// A recorder that drains the pipe whose read end is `r`.
fn draining(r: &OwnedFd) -> Rec {
    Rec {
        drain: Some(r.as_raw_fd()),
        ..Rec::default()
    }
}

/// The stream ended as [`assert_stream`] says, and the loop released its reference.
fn assert_ended(rec: &Arc<Rec>, last_res: i32) {
    assert_stream(rec, last_res);
    assert_eq!(
        Arc::strong_count(rec),
        1,
        "the loop still holds the handler"
    );
}

fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = common::pipe();
    for fd in [r.as_raw_fd(), w.as_raw_fd()] {
        // SAFETY: fcntl on a descriptor this test owns.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
    }
    (r, w)
}

fn write1(w: &OwnedFd) {
    // SAFETY: one byte from a valid buffer.
    let n = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    assert!(n == 1 || io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock);
}

fn poll_multi(fd: &OwnedFd) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
}

/// Submits `entry` with `rec`; the caller keeps what it names alive in `rec` or in
/// the test.
fn submit(ctx: &AioContext, entry: squeue::Entry, rec: &Arc<Rec>) -> RawOp {
    // SAFETY: the entries of these tests name a pipe the test keeps open until the
    // operation ended, or a timespec `rec` owns (the loop holds `rec` until the last
    // CQE).
    let op = unsafe { ctx.submit_raw_handler(entry, Arc::clone(rec)) }.unwrap();
    *rec.op.lock().unwrap() = Some(op);
    op
}

fn poll_until(ctx: &AioContext, mut cond: impl FnMut() -> bool) {
    while !cond() {
        ctx.poll(true);
    }
}

macro_rules! uring {
    ($name:literal) => {{
        let Some(ctx) = common::uring_ctx($name, AioContext::builder()) else {
            return;
        };
        ctx
    }};
}

#[test]
fn multishot_poll_fires_per_event_until_cancelled() {
    let ctx = uring!("multishot_poll_fires_per_event_until_cancelled");
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = nonblocking_pipe();
    let rec = Arc::new(draining(&r));
    let op = submit(&ctx, poll_multi(&r), &rec);
    for i in 1..=4 {
        write1(&w);
        poll_until(&ctx, || rec.len() >= i);
        let (res, flags) = rec.cqes()[i - 1];
        assert!(cqueue::more(flags), "event {i} is not the last CQE");
        assert_ne!(res as u32 & libc::POLLIN as u32, 0, "event {i}: {res:#x}");
    }
    ctx.cancel_raw(op);
    poll_until(&ctx, || rec.last_is_final());
    assert_stream(&rec, -libc::ECANCELED);
    // Ended: more writes reach nobody, and the loop released its reference.
    let n = rec.len();
    write1(&w);
    ctx.poll(false);
    assert_eq!(rec.len(), n);
    assert_eq!(Arc::strong_count(&rec), 1);
    ctx.cancel_raw(op); // stale: a no-op
}

#[test]
fn multishot_timeout_with_a_count_ends_by_itself() {
    let ctx = uring!("multishot_timeout_with_a_count_ends_by_itself");
    let _dog = Watchdog::on_ctx(&ctx);
    let rec = Arc::new(Rec {
        ts: types::Timespec::new().nsec(1_000_000),
        ..Rec::default()
    });
    let entry = opcode::Timeout::new(&raw const rec.ts)
        .count(3)
        .flags(types::TimeoutFlags::MULTISHOT)
        .build();
    submit(&ctx, entry, &rec);
    poll_until(&ctx, || rec.last_is_final());
    assert_eq!(rec.len(), 3, "{:?}", rec.cqes());
    assert_ended(&rec, -libc::ETIME);
}

/// Submitted from a bottom half, cancelled from inside its own handler.
#[test]
fn multishot_nested_in_callbacks() {
    let ctx = uring!("multishot_nested_in_callbacks");
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = nonblocking_pipe();
    let rec = Arc::new(Rec {
        cancel_at: Some(2),
        ctx: Mutex::new(Arc::downgrade(&ctx)),
        ..draining(&r)
    });
    let (c, rc, fd) = (Arc::downgrade(&ctx), Arc::clone(&rec), r.as_raw_fd());
    ctx.schedule_oneshot(move || {
        let ctx = c.upgrade().unwrap();
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build();
        submit(&ctx, entry, &rc);
    });
    ctx.poll(false);
    assert!(rec.op.lock().unwrap().is_some(), "the BH submitted");
    for i in 1..=2 {
        write1(&w);
        poll_until(&ctx, || rec.len() >= i);
    }
    poll_until(&ctx, || rec.last_is_final());
    assert_stream(&rec, -libc::ECANCELED);
    assert_eq!(rec.len(), 3);
    assert_eq!(Arc::strong_count(&rec), 1);
}

#[test]
fn multishot_inside_a_task() {
    let ctx = uring!("multishot_inside_a_task");
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = nonblocking_pipe();
    let rec = Arc::new(draining(&r));
    let w = Arc::new(w);
    let c = Arc::clone(&ctx);
    ctx.block_on(async {
        let op = submit(&c, poll_multi(&r), &rec);
        for i in 1..=3 {
            write1(&w);
            std::future::poll_fn(|cx| {
                *rec.waker.lock().unwrap() = Some(cx.waker().clone());
                if rec.len() >= i {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
        c.cancel_raw(op);
        std::future::poll_fn(|cx| {
            *rec.waker.lock().unwrap() = Some(cx.waker().clone());
            if rec.last_is_final() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    });
    assert_ended(&rec, -libc::ECANCELED);
}

/// A cancel right after the submit (both reach the kernel in the same enter), a
/// cancel with an event already posted, and a cancel while another thread keeps
/// writing: the stream always ends with exactly one last CQE, and nothing after it.
#[test]
fn multishot_racing_a_cancel() {
    let ctx = uring!("multishot_racing_a_cancel");
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = nonblocking_pipe();
    // Cancelled before the loop ever polled.
    let rec = Arc::new(Rec::default());
    let op = submit(&ctx, poll_multi(&r), &rec);
    ctx.cancel_raw(op);
    poll_until(&ctx, || rec.last_is_final());
    assert_stream(&rec, -libc::ECANCELED);
    // Readable at once: the first event and the cancel race in the kernel.
    write1(&w);
    let rec = Arc::new(Rec::default());
    let op = submit(&ctx, poll_multi(&r), &rec);
    ctx.cancel_raw(op);
    poll_until(&ctx, || rec.last_is_final());
    assert_stream(&rec, -libc::ECANCELED);
    // A writer thread keeps firing events while the loop cancels.
    let rec = Arc::new(draining(&r));
    let op = submit(&ctx, poll_multi(&r), &rec);
    let stop = Arc::new(AtomicBool::new(false));
    let w = Arc::new(w);
    let writer = {
        let (stop, w) = (Arc::clone(&stop), Arc::clone(&w));
        thread::spawn(move || {
            // Relaxed: a plain stop flag.
            while !stop.load(Ordering::Relaxed) {
                write1(&w);
                thread::yield_now();
            }
        })
    };
    poll_until(&ctx, || rec.len() >= 3);
    ctx.cancel_raw(op);
    poll_until(&ctx, || rec.last_is_final());
    let n = rec.len();
    for _ in 0..10 {
        ctx.poll(false);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(rec.len(), n, "a CQE after the last one");
    assert_ended(&rec, -libc::ECANCELED);
}

/// A handler that panics leaves its operation armed ([PO2], [PO3]): the panic leaves
/// `poll`, later events still arrive, and the cancel still ends it.
#[test]
fn multishot_handler_panic_keeps_the_operation() {
    let ctx = uring!("multishot_handler_panic_keeps_the_operation");
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = nonblocking_pipe();
    let rec = Arc::new(Rec {
        panic_on: Some(1),
        ..draining(&r)
    });
    let op = submit(&ctx, poll_multi(&r), &rec);
    write1(&w);
    let unwound = catch_unwind(AssertUnwindSafe(|| poll_until(&ctx, || rec.len() >= 1)));
    assert!(unwound.is_err(), "the handler's panic left poll");
    for i in 2..=3 {
        write1(&w);
        poll_until(&ctx, || rec.len() >= i);
    }
    ctx.cancel_raw(op);
    poll_until(&ctx, || rec.last_is_final());
    assert_ended(&rec, -libc::ECANCELED);
}

/// Dropped with a multishot poll and a multishot timeout armed (the poll's descriptor
/// readable, so an event may be posted and not dispatched): the drop cancels both,
/// their handlers get every CQE and the last, and the loop's references are gone once
/// the drop returns.
#[test]
fn multishot_armed_when_the_context_drops() {
    let ctx = uring!("multishot_armed_when_the_context_drops");
    let (r, w) = nonblocking_pipe();
    let poll = Arc::new(Rec::default());
    let timer = Arc::new(Rec {
        ts: types::Timespec::new().sec(3600),
        ..Rec::default()
    });
    {
        let _dog = Watchdog::on_ctx(&ctx);
        submit(&ctx, poll_multi(&r), &poll);
        let entry = opcode::Timeout::new(&raw const timer.ts)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build();
        submit(&ctx, entry, &timer);
        ctx.poll(false);
        write1(&w);
    }
    let _dog = Watchdog::arm_secs(30);
    drop(ctx);
    assert_stream(&poll, -libc::ECANCELED);
    assert_stream(&timer, -libc::ECANCELED);
    assert_eq!(Arc::strong_count(&poll), 1);
    assert_eq!(Arc::strong_count(&timer), 1);
}

/// `submit_raw` (a `FnOnce` callback) still refuses multishot entries, naming the
/// handler API; the handler API refuses provided buffers and another thread.
#[test]
fn multishot_refusals() {
    let ctx = uring!("multishot_refusals");
    let (r, _w) = nonblocking_pipe();
    // SAFETY: refused entries never reach the kernel.
    let err = unsafe { ctx.submit_raw(poll_multi(&r), Box::new(|_, _| {})) }.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("submit_raw_handler"), "{err}");
    let rec = Arc::new(Rec::default());
    let selected = opcode::Nop::new()
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
    // SAFETY: as above.
    let err = unsafe { ctx.submit_raw_handler(selected, Arc::clone(&rec)) }.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(Arc::strong_count(&rec), 1);
    ctx.poll(false); // binds the home thread
    let c = Arc::clone(&ctx);
    let other = thread::spawn(move || {
        catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: a NOP names no memory; the call panics before it is taken.
            let _ = unsafe {
                c.submit_raw_handler(opcode::Nop::new().build(), Arc::new(Rec::default()))
            };
        }))
        .is_err()
    });
    assert!(
        other.join().unwrap(),
        "submit_raw_handler on another thread"
    );
}

/// epoll has no ring: the call is refused with `Unsupported` and the handler released.
#[test]
fn multishot_on_epoll_is_unsupported() {
    let ctx = AioContext::builder()
        .backend(Backend::Epoll)
        .build()
        .unwrap();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, _w) = nonblocking_pipe();
    let rec = Arc::new(Rec::default());
    // SAFETY: refused on epoll, never reaches a kernel.
    let err = unsafe { ctx.submit_raw_handler(poll_multi(&r), Arc::clone(&rec)) }.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    assert_eq!(Arc::strong_count(&rec), 1);
    // SAFETY: as above.
    let err =
        unsafe { ctx.submit_raw(opcode::Nop::new().build(), Box::new(|_, _| {})) }.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    assert!(!ctx.poll(false));
}
