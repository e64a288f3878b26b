//! Regressions of the epoll back end, the worker pool and the IoThread start, run on
//! whichever back end `AIOCTX_BACKEND` picks (run it with `AIOCTX_BACKEND=epoll` too):
//! stream reads far beyond the pool's size, cancelled tty reads, I/O that completed
//! before its context dropped, and getters that must not bind a home thread.
#![cfg(not(loom))]

mod common;

use std::future::Future;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use aioctx::aio::IoThread;
use common::{HANG_LIMIT, Watchdog, new_ctx, pipe};

#[test]
fn regress_ring_entries_does_not_bind_the_calling_thread() {
    let ctx = new_ctx();
    let entries = ctx.ring_entries();
    assert!(
        !ctx.is_home_thread(),
        "ring_entries() made the calling thread the context's home"
    );
    // Another thread may read it too, and then still poll it from here.
    let c = ctx.clone();
    let there = std::thread::spawn(move || (c.ring_entries(), c.is_home_thread()))
        .join()
        .unwrap();
    assert_eq!(there, (entries, false));
    ctx.poll(false);
    assert!(ctx.is_home_thread());
}

#[test]
fn regress_iothread_new_returns_once_its_thread_is_home() {
    for round in 0..20 {
        let it = IoThread::new(&format!("regress-home-{round}")).expect("start an IoThread");
        // Neither a getter nor make_current may take the context from its thread now.
        let _ = it.ctx().ring_entries();
        assert!(
            !it.ctx().is_home_thread(),
            "round {round}: the caller is home"
        );
        let stolen = catch_unwind(AssertUnwindSafe(|| it.ctx().make_current()));
        assert!(
            stolen.is_err(),
            "round {round}: make_current on the caller succeeded: the IoThread was not home yet"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let c = it.ctx().clone();
        it.ctx()
            .schedule_oneshot(move || tx.send(c.is_home_thread()).unwrap());
        assert!(
            rx.recv().unwrap(),
            "round {round}: the IoThread is not home"
        );
        drop(it); // joins the thread, which must not have panicked
    }
}

/// A pty pair (blocking): (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: the out-pointers are valid; null name, termios and winsize are allowed.
    let res = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(res, 0, "openpty: {}", io::Error::last_os_error());
    // SAFETY: openpty just returned these two descriptors; nobody else owns them.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// A regular file holding `data`, unlinked at once.
fn regular_file(tag: &str, data: &[u8]) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("aioctx-regress-{tag}-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create a temp file");
    std::fs::remove_file(&path).expect("unlink the temp file");
    f.write_all(data).unwrap();
    f
}

/// `fcntl(fd, F_SETFL, flags)`.
fn set_flags(fd: RawFd, flags: libc::c_int) {
    // SAFETY: F_SETFL takes an int argument; a bad fd is an error, not UB.
    let res = unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    assert_eq!(res, 0, "F_SETFL: {}", io::Error::last_os_error());
}

/// Bytes waiting in a pipe or tty.
fn queued_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the valid pointer.
    let res = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(res, 0, "FIONREAD: {}", io::Error::last_os_error());
    n as usize
}

/// Polls `op` once with a waker that does nothing; `None` while pending.
fn poll_once<F: Future + Unpin>(op: &mut F) -> Option<F::Output> {
    match Pin::new(op).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[test]
fn regress_stream_reads_beyond_the_pool_starve_neither_files_nor_writes() {
    // Far more pending pipe reads than the epoll back end has pool workers (64), on two
    // contexts: a regular-file read on each and a write into pipe 0 must still finish,
    // and every read then completes once its pipe has data.
    const PER_CTX: usize = 100;
    let _dog = Watchdog::arm(HANG_LIMIT);
    let ctxs = [new_ctx(), new_ctx()];
    let file = regular_file("starve", b"file data");
    let pipes: Vec<Vec<(OwnedFd, OwnedFd)>> = (0..2)
        .map(|_| (0..PER_CTX).map(|_| pipe()).collect())
        .collect();
    let mut reads: Vec<Vec<_>> = ctxs
        .iter()
        .zip(&pipes)
        .map(|(ctx, pipes)| {
            pipes
                .iter()
                .map(|(r, _)| ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0))
                .collect()
        })
        .collect();
    for (ctx, reads) in ctxs.iter().zip(&mut reads) {
        for op in reads.iter_mut() {
            assert!(poll_once(op).is_none(), "a read of an empty pipe completed");
        }
        for _ in 0..3 {
            ctx.poll(false);
        }
    }
    for (i, ctx) in ctxs.iter().enumerate() {
        let (res, buf) = ctx.block_on(ctx.read_at(file.as_raw_fd(), vec![0u8; 64], 5));
        assert_eq!(res.unwrap(), 4, "context {i}: file read");
        assert_eq!(&buf[..4], b"data");
    }
    // A write into pipe 0 on the same context as its pending read.
    let (res, _) =
        ctxs[0].block_on(ctxs[0].write_at(pipes[0][0].1.as_raw_fd(), b"pipe 0".to_vec(), 0));
    assert_eq!(res.unwrap(), 6);
    let mut done = None;
    while done.is_none() {
        ctxs[0].poll(true);
        done = poll_once(&mut reads[0][0]);
    }
    let (res, buf) = done.unwrap();
    assert_eq!(res.unwrap(), 6);
    assert_eq!(&buf[..6], b"pipe 0");
    // Then data for every other read.
    for (c, pipes) in pipes.iter().enumerate() {
        for (k, (_, w)) in pipes.iter().enumerate().skip(usize::from(c == 0)) {
            let msg = format!("{c}:{k}");
            // SAFETY: writes from a valid buffer of the given length.
            let n = unsafe { libc::write(w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
            assert_eq!(n, msg.len() as isize);
        }
    }
    for (c, (ctx, reads)) in ctxs.iter().zip(&mut reads).enumerate() {
        for (k, op) in reads.iter_mut().enumerate().skip(usize::from(c == 0)) {
            let (res, buf) = loop {
                if let Some(out) = poll_once(op) {
                    break out;
                }
                ctx.poll(true);
            };
            let msg = format!("{c}:{k}");
            assert_eq!(res.unwrap(), msg.len());
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
        }
    }
}

#[test]
fn regress_pty_read_is_cancelled_by_dropping_it_and_its_context() {
    // A read on a tty can block forever. Dropping its future, and dropping its context
    // while another one waits, must both return, and the waiting one must resolve with
    // an error: nothing may stay parked on the tty.
    let _dog = Watchdog::arm(HANG_LIMIT);
    let (master, _slave) = pty();
    let ctx = new_ctx();
    let file = regular_file("pty", b"still works");
    let mut dropped = ctx.read_at(master.as_raw_fd(), vec![0u8; 16], 0);
    let mut kept = ctx.read_at(master.as_raw_fd(), vec![0u8; 16], 0);
    assert!(poll_once(&mut dropped).is_none());
    assert!(poll_once(&mut kept).is_none());
    for _ in 0..3 {
        ctx.poll(false);
    }
    drop(dropped);
    let (res, _) = ctx.block_on(ctx.read_at(file.as_raw_fd(), vec![0u8; 16], 0));
    assert_eq!(res.unwrap(), 11, "a file read after the cancelled pty read");
    assert!(
        poll_once(&mut kept).is_none(),
        "a read of an idle pty completed"
    );
    drop(ctx);
    let (res, _) = poll_once(&mut kept).expect(
        "the pty read was still in flight after its context was dropped: something stays \
         parked on the tty",
    );
    assert!(res.is_err(), "a cancelled pty read returned {res:?}");
}

#[test]
fn regress_read_that_took_data_reports_it_when_its_context_drops() {
    // A pipe read that consumed bytes must report them, whatever happens to its context
    // after; only a read that took nothing may report ECANCELED.
    let _dog = Watchdog::arm(HANG_LIMIT);
    for round in 0..20 {
        let (r, w) = pipe();
        let ctx = new_ctx();
        let mut op = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut op).is_none());
        ctx.poll(false);
        // SAFETY: writes from a valid 7-byte buffer.
        let n = unsafe { libc::write(w.as_raw_fd(), b"7 bytes".as_ptr().cast(), 7) };
        assert_eq!(n, 7);
        // Give a worker or the kernel a chance to take the bytes before the drop, without
        // running the context: either way the invariant below must hold.
        for _ in 0..(round * 50) {
            if queued_bytes(r.as_raw_fd()) == 0 {
                break;
            }
            std::thread::yield_now();
        }
        drop(ctx);
        let (res, buf) = poll_once(&mut op).expect("resolved once its context dropped");
        match res {
            Ok(n) => {
                assert_eq!(n, 7, "round {round}");
                assert_eq!(&buf[..7], b"7 bytes", "round {round}");
            }
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ECANCELED),
                    "round {round}: {e}"
                );
                assert_eq!(
                    queued_bytes(r.as_raw_fd()),
                    7,
                    "round {round}: ECANCELED, but the bytes are gone from the pipe"
                );
            }
        }
    }
}

#[test]
fn regress_file_write_that_ran_reports_it_when_its_context_drops() {
    // The worker-pool side of the same rule: a write that reached the file must report
    // its byte count, whatever happens to its context after; ECANCELED means the file
    // was not touched.
    let _dog = Watchdog::arm(HANG_LIMIT);
    for round in 0..20 {
        let file = regular_file(&format!("write-drop-{round}"), b"");
        let ctx = new_ctx();
        let mut op = ctx.write_at(file.as_raw_fd(), b"abc".to_vec(), 0);
        assert!(poll_once(&mut op).is_none());
        // Give a worker a chance to run it before the drop, without running the context.
        for _ in 0..(round * 50) {
            if file.metadata().unwrap().len() == 3 {
                break;
            }
            std::thread::yield_now();
        }
        drop(ctx);
        let (res, _) = poll_once(&mut op).expect("resolved once its context dropped");
        let len = file.metadata().unwrap().len();
        match res {
            Ok(n) => assert_eq!((n, len), (3, 3), "round {round}"),
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ECANCELED),
                    "round {round}: {e}"
                );
                assert_eq!(
                    len, 0,
                    "round {round}: ECANCELED, but the write reached the file"
                );
            }
        }
    }
}

#[test]
fn stream_ops_on_one_descriptor_each_complete_once() {
    // Reads queued on one pipe each take one write's data; a write into a full
    // pipe waits for room; a socket pair carries typed reads and writes both ways.
    let _dog = Watchdog::arm(HANG_LIMIT);
    let ctx = new_ctx();
    let (r, w) = pipe();
    let mut first = ctx.read_at(r.as_raw_fd(), vec![0u8; 3], 0);
    let mut second = ctx.read_at(r.as_raw_fd(), vec![0u8; 3], 0);
    assert!(poll_once(&mut first).is_none());
    assert!(poll_once(&mut second).is_none());
    ctx.poll(false);
    // Each write completes exactly one of the reads (io_uring does not promise which
    // waiter a pipe wakes first, so the order is not checked here).
    let mut got = Vec::new();
    let mut ops = [Some(first), Some(second)];
    for msg in [b"abc", b"def"] {
        // SAFETY: writes from a valid 3-byte buffer.
        let n = unsafe { libc::write(w.as_raw_fd(), msg.as_ptr().cast(), 3) };
        assert_eq!(n, 3);
        let before = got.len();
        while got.len() == before {
            for slot in &mut ops {
                if let Some(op) = slot
                    && let Some((res, buf)) = poll_once(op)
                {
                    assert_eq!(res.unwrap(), 3);
                    got.push(buf);
                    *slot = None;
                }
            }
            if got.len() == before {
                ctx.poll(true);
            }
        }
        assert_eq!(got.len(), before + 1, "one write completed two reads");
    }
    got.sort();
    assert_eq!(got, [b"abc".to_vec(), b"def".to_vec()]);

    // Fill the pipe, then a typed write must wait for room, not fail or block the loop.
    set_flags(w.as_raw_fd(), libc::O_NONBLOCK);
    let chunk = [7u8; 4096];
    // SAFETY: writes from a valid buffer of the given length.
    while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    set_flags(w.as_raw_fd(), 0);
    let mut write = ctx.write_at(w.as_raw_fd(), b"tail".to_vec(), 0);
    assert!(poll_once(&mut write).is_none());
    for _ in 0..3 {
        ctx.poll(false);
        assert!(
            poll_once(&mut write).is_none(),
            "a write into a full pipe completed"
        );
    }
    let mut sink = vec![0u8; 65536];
    // SAFETY: reads into a valid buffer of the given length.
    let n = unsafe { libc::read(r.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) };
    assert!(n > 0);
    let (res, _) = loop {
        if let Some(out) = poll_once(&mut write) {
            break out;
        }
        ctx.poll(true);
    };
    assert_eq!(res.unwrap(), 4);

    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut read = ctx.read_at(b.as_raw_fd(), vec![0u8; 8], 0);
    assert!(poll_once(&mut read).is_none());
    let (res, _) = ctx.block_on(ctx.write_at(a.as_raw_fd(), b"socket".to_vec(), 0));
    assert_eq!(res.unwrap(), 6);
    let (res, buf) = ctx.block_on(read);
    assert_eq!(res.unwrap(), 6);
    assert_eq!(&buf[..6], b"socket");
}

#[test]
fn pty_reads_and_writes_complete() {
    // A tty has no RWF_NOWAIT: its syscalls run once poll says they cannot block.
    let _dog = Watchdog::arm(HANG_LIMIT);
    let (master, slave) = pty();
    let ctx = new_ctx();
    let mut read = ctx.read_at(master.as_raw_fd(), vec![0u8; 64], 0);
    assert!(poll_once(&mut read).is_none());
    ctx.poll(false);
    let (res, _) = ctx.block_on(ctx.write_at(slave.as_raw_fd(), b"hello\n".to_vec(), 0));
    assert_eq!(res.unwrap(), 6);
    let (res, buf) = ctx.block_on(read);
    let n = res.unwrap();
    assert!(n >= 5 && buf.starts_with(b"hello"), "read {:?}", &buf[..n]);
}
