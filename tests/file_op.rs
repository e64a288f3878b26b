//! A `File`'s operation futures (`FileOp`, `FileUnitOp`): a per-operation deadline on
//! its reads, writes and flushes, and reads and writes on a registered buffer
//! (`read_fixed_at`/`write_fixed_at`), on the back end this run selects (io_uring by
//! default: `LINK_TIMEOUT`, `READ_FIXED`/`WRITE_FIXED`; `AIOCTX_BACKEND=epoll`: a timer
//! and a cancel, `pread`/`pwrite`). Bad input (misaligned O_DIRECT, the context gone),
//! inside a bottom half and a task, a drop racing the completion with a live-buffer
//! counter, and a context dropped under a pending operation.
#![cfg(not(loom))]

mod common;
mod file_common;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use aioctx::aio::{AioContext, File, FixedBufPool, OpenOptions};
use common::{Watchdog, new_ctx, pipe, poll_once, write_fd};
use file_common::{Counted, Scratch, direct_file, started_in_bh};

const SHORT: Duration = Duration::from_millis(20);
const LONG: Duration = Duration::from_secs(60);

/// A `File` on the read end of a pipe nobody writes to (until the test does), and
/// the write end.
fn pipe_file(ctx: &AioContext) -> (File, OwnedFd) {
    let (r, w) = pipe();
    (File::from_owned_fd(ctx, r), w)
}

fn rw_file(ctx: &AioContext, scratch: &Scratch) -> File {
    let open = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .open(ctx, scratch.path("f"));
    ctx.block_on(open).expect("open a scratch file")
}

#[test]
fn a_file_read_nobody_writes_to_times_out_and_is_cancelled() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (file, w) = pipe_file(&ctx);
    let (res, buf) = ctx.block_on(file.read_at(Vec::with_capacity(8), 0).with_deadline(SHORT));
    let e = res.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert_eq!(buf.capacity(), 8, "the buffer comes back");
    // Cancelled: data written afterwards is there for the next read.
    write_fd(w.as_raw_fd(), b"after");
    let (res, buf) = ctx.block_on(file.read_at(buf, 0).with_deadline(LONG));
    assert_eq!(res.unwrap(), 5);
    assert_eq!(buf, b"after");
}

#[test]
fn file_writes_and_flushes_within_their_deadline_keep_their_results() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let scratch = Scratch::new("fileop-intime");
    let file = rw_file(&ctx, &scratch);
    ctx.block_on(async {
        let (res, _) = file
            .write_at(b"0123456789".to_vec(), 0)
            .with_deadline(LONG)
            .await;
        assert_eq!(res.unwrap(), 10);
        let (res, _) = file
            .writev_at(vec![b"ab".to_vec(), b"cd".to_vec()], 10)
            .with_deadline(LONG)
            .await;
        assert_eq!(res.unwrap(), 4);
        file.fsync().with_deadline(LONG).await.unwrap();
        file.fdatasync().with_deadline(LONG).await.unwrap();
        file.set_len(14).with_deadline(LONG).await.unwrap();
        let (res, bufs) = file
            .readv_at(vec![Vec::with_capacity(4), Vec::with_capacity(10)], 0)
            .with_deadline(LONG)
            .await;
        assert_eq!(res.unwrap(), 14);
        assert_eq!(bufs, [b"0123".to_vec(), b"456789abcd".to_vec()]);
    });
}

#[test]
fn a_cancel_handle_of_a_file_read() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (file, _w) = pipe_file(&ctx);
    let mut read = file.read_at(Vec::with_capacity(8), 0).with_deadline(LONG);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    let handle = read.cancel_handle();
    let canceller = std::thread::spawn(move || handle.cancel());
    canceller.join().unwrap();
    let (res, _) = ctx.block_on(read);
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    let flush = file.fsync();
    flush.cancel_handle().cancel();
    // A flush cancelled before its first poll never starts.
    assert_eq!(
        ctx.block_on(flush).unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
}

/// Refused before the kernel ([FO1]): the error comes at the first poll, with the
/// buffer; the deadline and the cancel handle do nothing.
#[test]
fn refused_operations_keep_their_error_under_a_deadline() {
    let ctx = new_ctx();
    let (file, _w) = pipe_file(&ctx);
    // A File whose context is gone.
    let gone = {
        let c = new_ctx();
        let (f, _w2) = pipe_file(&c);
        drop(c);
        f
    };
    let read = gone.read_at(vec![0u8; 4], 0).with_deadline(SHORT);
    read.cancel_handle().cancel();
    let (res, buf) = ctx.block_on(read);
    assert_eq!(res.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(buf.len(), 4);
    let e = ctx.block_on(gone.fsync().with_deadline(SHORT)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    let pool = FixedBufPool::new(&ctx, 1, 64).unwrap();
    let (res, buf) = ctx.block_on(gone.read_fixed_at(pool.try_get().unwrap(), 0));
    assert_eq!(res.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    drop(buf);
    assert_eq!(pool.available(), 1);
    drop(file);
}

#[test]
fn registered_buffers_serve_o_direct_and_misalignment_is_refused() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let Some((_scratch, file)) = direct_file(
        "registered_buffers_serve_o_direct_and_misalignment_is_refused",
        &ctx,
    ) else {
        return;
    };
    let pool = FixedBufPool::new(&ctx, 2, 8192).unwrap();
    ctx.block_on(async {
        let mut buf = pool.try_get().unwrap();
        assert_eq!(
            buf.as_ptr() as usize % 4096,
            0,
            "pool buffers are page-aligned"
        );
        buf.set_len(8192);
        buf.fill(7);
        let (res, buf) = file.write_fixed_at(buf, 4096).with_deadline(LONG).await;
        assert_eq!(res.unwrap(), 8192);
        let (res, buf) = file.read_fixed_at(buf, 4096).with_deadline(LONG).await;
        assert_eq!(res.unwrap(), 8192);
        assert!(buf.iter().all(|&b| b == 7));
        // A misaligned offset and a misaligned length: InvalidInput, before the kernel.
        let (res, mut buf) = file.read_fixed_at(buf, 100).await;
        let e = res.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("read_fixed_at: O_DIRECT offset 100"),
            "{e}"
        );
        buf.set_len(100);
        let (res, _) = file.write_fixed_at(buf, 0).with_deadline(LONG).await;
        let e = res.unwrap_err();
        assert!(
            e.to_string()
                .contains("write_fixed_at: O_DIRECT length 100"),
            "{e}"
        );
        let (res, _) = file.read_at(vec![0u8; 4096], 3).with_deadline(SHORT).await;
        assert_eq!(res.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    });
    assert_eq!(pool.available(), 2);
}

#[test]
fn fixed_io_on_a_file_round_trips_and_times_out() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let scratch = Scratch::new("fileop-fixed");
    let file = rw_file(&ctx, &scratch);
    let pool = FixedBufPool::new(&ctx, 2, 64).unwrap();
    let mut buf = pool.try_get().unwrap();
    buf.set_len(6);
    buf.copy_from_slice(b"pooled");
    let (res, buf) = ctx.block_on(file.write_fixed_at(buf, 3));
    assert_eq!(res.unwrap(), 6);
    let (res, buf) = ctx.block_on(file.read_fixed_at(buf, 0));
    assert_eq!(res.unwrap(), 9);
    assert_eq!(&buf[..], b"\0\0\0pooled");
    // A registered-buffer read of a pipe nobody writes to, with a deadline.
    let (pfile, w) = pipe_file(&ctx);
    let (res, buf) = ctx.block_on(pfile.read_fixed_at(buf, 0).with_deadline(SHORT));
    assert_eq!(res.unwrap_err().kind(), io::ErrorKind::TimedOut);
    write_fd(w.as_raw_fd(), b"next");
    let (res, buf) = ctx.block_on(pfile.read_fixed_at(buf, 0));
    assert_eq!(&buf[..res.unwrap()], b"next");
}

/// Started (and polled once) inside a bottom half, finished outside; and a deadline
/// that fires for a read started inside a task spawned by a bottom half.
#[test]
fn file_ops_with_deadlines_inside_a_bh_and_a_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (file, w) = pipe_file(&ctx);
    let file = Arc::new(file);
    let pool = FixedBufPool::new(&ctx, 1, 64).unwrap();
    let (f, p) = (file.clone(), pool.clone());
    let read = started_in_bh(&ctx, move || {
        f.read_fixed_at(p.try_get().unwrap(), 0).with_deadline(LONG)
    });
    write_fd(w.as_raw_fd(), b"bh");
    let (res, buf) = ctx.block_on(read);
    assert_eq!(&buf[..res.unwrap()], b"bh");
    drop(buf);

    let done = Arc::new(Mutex::new(None));
    let (c, f, d) = (ctx.clone(), file.clone(), done.clone());
    ctx.schedule_oneshot(move || {
        drop(c.spawn(async move {
            let (res, _) = f
                .read_at(Vec::with_capacity(4), 0)
                .with_deadline(SHORT)
                .await;
            *d.lock().unwrap() = Some(res.map_err(|e| e.kind()));
        }));
    });
    while done.lock().unwrap().is_none() {
        ctx.poll(true);
    }
    assert_eq!(
        done.lock().unwrap().take().unwrap(),
        Err(io::ErrorKind::TimedOut)
    );
}

/// Futures with deadlines dropped at different points (before their first poll, just
/// after it, after some loop iterations, after they completed); every buffer is freed
/// exactly once, none before the context is done with it, and a dropped read takes no
/// data written after its drop.
#[test]
fn dropped_file_ops_with_deadlines_free_each_buffer_once() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let live = Arc::new(AtomicUsize::new(0));
    let (file, w) = pipe_file(&ctx);
    let mut rng = common::Rng::new(0xF11E);
    for round in 0..200 {
        let mut read = file
            .read_at(Counted::new(16, &live), 0)
            .with_deadline(if round % 2 == 0 { LONG } else { SHORT });
        match rng.below(4) {
            0 => {}
            1 => assert!(poll_once(&mut read).is_pending()),
            2 => {
                assert!(poll_once(&mut read).is_pending());
                for _ in 0..rng.below(3) {
                    ctx.poll(false);
                }
            }
            _ => {
                write_fd(w.as_raw_fd(), b"x");
                let (res, buf) = ctx.block_on(read);
                assert_eq!(res.unwrap(), 1);
                drop(buf);
                continue;
            }
        }
        drop(read);
        write_fd(w.as_raw_fd(), b"y");
        let (res, buf) = ctx.block_on(file.read_at(Vec::with_capacity(4), 0));
        assert_eq!(
            res.unwrap(),
            1,
            "round {round}: the dropped read took the byte"
        );
        assert_eq!(buf, b"y");
    }
    drop(file);
    drop(ctx);
    assert_eq!(live.load(Ordering::SeqCst), 0, "a buffer leaked");
}

/// A context dropped while a `File` read with a far deadline waits: the drop completes
/// it (`ECANCELED`, not `TimedOut`), frees its buffer after its final completion, and
/// the `File` then reports its context gone.
#[test]
fn a_context_dropped_under_a_file_read_with_a_deadline() {
    let ctx = new_ctx();
    let live = Arc::new(AtomicUsize::new(0));
    let (file, _w) = pipe_file(&ctx);
    let pool = FixedBufPool::new(&ctx, 1, 64).unwrap();
    let mut read = file.read_at(Counted::new(8, &live), 0).with_deadline(LONG);
    let mut fixed = file
        .read_fixed_at(pool.try_get().unwrap(), 0)
        .with_deadline(LONG);
    assert!(poll_once(&mut read).is_pending());
    assert!(poll_once(&mut fixed).is_pending());
    ctx.poll(false);
    let _watch = common::watchdog("context drop under a File deadline", 30);
    let weak = Arc::downgrade(&ctx);
    drop(ctx);
    assert!(weak.upgrade().is_none(), "the context was not freed");
    match poll_once(&mut read) {
        Poll::Ready((res, buf)) => {
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
            drop(buf);
        }
        Poll::Pending => panic!("the read did not resolve with its context dropped"),
    }
    match poll_once(&mut fixed) {
        Poll::Ready((res, _)) => {
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        }
        Poll::Pending => panic!("the fixed read did not resolve with its context dropped"),
    }
    assert_eq!(live.load(Ordering::SeqCst), 0);
    let other = new_ctx();
    let e = other
        .block_on(file.fsync().with_deadline(SHORT))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
}

/// Descriptors that cannot serve: no descriptor at all (`-1`: never a number another
/// test's descriptor could take) and a `File` open read-only, written to. The
/// registered-buffer operations report `EBADF` as a plain `io::Error`, with a deadline
/// or without, and the buffer goes back to its pool.
#[test]
fn fixed_io_on_a_bad_descriptor_is_ebadf() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let pool = FixedBufPool::new(&ctx, 1, 64).unwrap();
    let (res, buf) = ctx.block_on(ctx.read_fixed_at(-1, pool.try_get().unwrap(), 0));
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EBADF));
    let (res, mut buf) = ctx.block_on(ctx.read_fixed_at(-1, buf, 0).with_deadline(LONG));
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EBADF));
    buf.set_len(1);
    let scratch = Scratch::new("fileop-ebadf");
    drop(rw_file(&ctx, &scratch));
    let read_only = ctx.block_on(File::open(&ctx, scratch.path("f"))).unwrap();
    let (res, buf) = ctx.block_on(read_only.write_fixed_at(buf, 0).with_deadline(LONG));
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EBADF));
    drop(buf);
    assert_eq!(pool.available(), 1);
}

/// Started inside an fd handler (level-triggered: it clears its notifier first), polled
/// once there, and finished outside: the deadline still fires and the buffer comes back.
#[test]
fn a_file_read_with_a_deadline_started_inside_an_fd_handler() {
    use aioctx::aio::EventNotifier;
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (file, _w) = pipe_file(&ctx);
    let file = Arc::new(file);
    let e = Arc::new(EventNotifier::new().unwrap());
    let stash = Arc::new(Mutex::new(None));
    let (e2, f, s) = (e.clone(), file.clone(), stash.clone());
    let handler = move || {
        e2.test_and_clear().unwrap();
        let mut read = f.read_at(Vec::with_capacity(4), 0).with_deadline(SHORT);
        assert!(poll_once(&mut read).is_pending());
        *s.lock().unwrap() = Some(read);
    };
    ctx.set_fd_handler(e.fd(), Some(Box::new(handler)), None)
        .unwrap();
    e.set().unwrap();
    while stash.lock().unwrap().is_none() {
        ctx.poll(true);
    }
    ctx.set_fd_handler(e.fd(), None, None).unwrap();
    let read = stash.lock().unwrap().take().unwrap();
    let (res, buf) = ctx.block_on(read);
    assert_eq!(res.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert_eq!(buf.capacity(), 4);
}
