//! Registered buffers (`FixedBufPool`, `read_fixed_at`/`write_fixed_at`) on the back
//! end this run selects (io_uring by default: `READ_FIXED`/`WRITE_FIXED`;
//! `AIOCTX_BACKEND=epoll`: the same API on plain `pread`/`pwrite`): round trips, bad
//! input, one table per ring, a buffer of another context's pool, a pending read
//! cancelled, dropped, or outliving its pool handle and its context, and inside a task.
#![cfg(not(loom))]

mod common;
mod file_common;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::task::Poll;

use aioctx::aio::{Backend, FixedBufPool};
use common::{Watchdog, new_ctx, pipe, poll_once, tempfile, write_fd};

#[test]
fn write_then_read_back_through_the_pool() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let pool = FixedBufPool::new(&ctx, 4, 4096).unwrap();
    assert_eq!(pool.is_registered(), ctx.backend() == Backend::IoUring);
    assert_eq!((pool.available(), pool.buf_size()), (4, 4096));
    let file = tempfile("fixed-rw");
    let fd = file.file.as_raw_fd();
    for i in 0..8u8 {
        let mut buf = pool.try_get().unwrap();
        buf.set_len(100);
        buf.fill(i + 1);
        let (res, buf) = ctx.block_on(ctx.write_fixed_at(fd, buf, u64::from(i) * 100));
        assert_eq!(res.unwrap(), 100);
        drop(buf);
    }
    for i in 0..8u8 {
        let buf = pool.try_get().unwrap();
        let (res, buf) = ctx.block_on(ctx.read_fixed_at(fd, buf, u64::from(i) * 100));
        let n = res.unwrap();
        assert_eq!(
            n,
            800 - usize::from(i) * 100,
            "read up to the end of the file"
        );
        assert_eq!(buf.len(), n);
        assert!(
            buf[..100].iter().all(|&b| b == i + 1),
            "round {i}: {:?}",
            &buf[..4]
        );
    }
    assert_eq!(pool.available(), 4, "every buffer went back to the pool");
}

#[test]
fn the_pool_runs_out_and_refills() {
    let ctx = new_ctx();
    let pool = FixedBufPool::new(&ctx, 2, 512).unwrap();
    let a = pool.try_get().unwrap();
    let b = pool.try_get().unwrap();
    assert!(pool.try_get().is_none());
    drop(a);
    let c = pool.try_get().unwrap();
    assert_eq!(c.capacity(), 512);
    assert!(c.is_empty());
    drop((b, c));
    assert_eq!(pool.available(), 2);
}

#[test]
fn bad_sizes_and_a_second_table_are_refused() {
    let ctx = new_ctx();
    for (count, size) in [(0, 4096), (1, 0), (aioctx::aio::MAX_FIXED_BUFS + 1, 1)] {
        let e = FixedBufPool::new(&ctx, count, size).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{count}x{size}: {e}");
        assert!(e.to_string().contains("buffers of"), "{e}");
    }
    let _first = FixedBufPool::new(&ctx, 1, 4096).unwrap();
    let second = FixedBufPool::new(&ctx, 1, 4096);
    if ctx.backend() == Backend::IoUring {
        let e = second.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    } else {
        assert!(!second.unwrap().is_registered());
    }
}

/// A buffer of another context's pool is read into with a plain read (its index means
/// nothing on this ring).
#[test]
fn a_buffer_of_another_contexts_pool_works() {
    let ctx = new_ctx();
    let other = new_ctx();
    let pool = FixedBufPool::new(&other, 1, 64).unwrap();
    let (r, w) = pipe();
    write_fd(w.as_raw_fd(), b"elsewhere");
    let buf = pool.try_get().unwrap();
    let (res, buf) = ctx.block_on(ctx.read_fixed_at(r.as_raw_fd(), buf, 0));
    assert_eq!(&buf[..res.unwrap()], b"elsewhere");
}

/// A pending read into a registered buffer: its pool handle dropped first, then data
/// arrives; then another one cancelled by handle, another dropped; then one with the
/// context dropped under it.
#[test]
fn pending_fixed_reads_outlive_pool_handle_cancel_drop_and_context() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let pool = FixedBufPool::new(&ctx, 2, 64).unwrap();
    let (r, w) = pipe();
    let mut read = ctx.read_fixed_at(r.as_raw_fd(), pool.try_get().unwrap(), 0);
    let spare = pool.try_get().unwrap();
    drop(pool);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    write_fd(w.as_raw_fd(), b"late");
    let (res, buf) = ctx.block_on(read);
    assert_eq!(&buf[..res.unwrap()], b"late");

    let read = ctx.read_fixed_at(r.as_raw_fd(), buf, 0);
    read.cancel_handle().cancel();
    let (res, buf) = ctx.block_on(read);
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));

    let mut read = ctx.read_fixed_at(r.as_raw_fd(), buf, 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    drop(read);
    write_fd(w.as_raw_fd(), b"next");
    let (res, spare) = ctx.block_on(ctx.read_fixed_at(r.as_raw_fd(), spare, 0));
    assert_eq!(
        &spare[..res.unwrap()],
        b"next",
        "data went to the dropped read"
    );

    let mut read = ctx.read_fixed_at(r.as_raw_fd(), spare, 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    drop(ctx);
    match poll_once(&mut read) {
        Poll::Ready((res, _)) => {
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        }
        Poll::Pending => panic!("the read did not resolve with its context dropped"),
    }
}

#[test]
fn fixed_io_inside_a_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let pool = FixedBufPool::new(&ctx, 1, 64).unwrap();
    let file = tempfile("fixed-task");
    let fd = file.file.as_raw_fd();
    let c = ctx.clone();
    let got = ctx.block_on(ctx.spawn(async move {
        let mut buf = pool.try_get().unwrap();
        buf.set_len(4);
        buf.copy_from_slice(b"task");
        let (res, buf) = c.write_fixed_at(fd, buf, 0).await;
        assert_eq!(res.unwrap(), 4);
        let (res, buf) = c.read_fixed_at(fd, buf, 0).await;
        buf[..res.unwrap()].to_vec()
    }));
    assert_eq!(got.unwrap(), b"task");
}

/// The child's side of `a_memlock_refusal_names_the_limit` (a process of its own: the
/// limit is process-wide).
const MEMLOCK_CHILD: &str = "AIOCTX_FIXED_MEMLOCK_CHILD";

/// Registration beyond `RLIMIT_MEMLOCK` fails with an error naming the limit. Runs in a
/// child process (this test binary again) with a 64 KiB limit; skipped where the
/// kernel does not charge the limit (`CAP_IPC_LOCK`) or on epoll (nothing is pinned).
#[test]
fn a_memlock_refusal_names_the_limit() {
    if std::env::var_os(MEMLOCK_CHILD).is_some() {
        let lim = libc::rlimit {
            rlim_cur: 64 << 10,
            rlim_max: 64 << 10,
        };
        // SAFETY: a valid rlimit; this process is the child, alone with its limit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) }, 0);
        drop_ipc_lock();
        let ctx = new_ctx();
        match FixedBufPool::new(&ctx, 16, 1 << 20) {
            Ok(pool) => println!("CHILD-OK registered={}", pool.is_registered()),
            Err(e) => println!("CHILD-ERR {:?} {e}", e.kind()),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_memlock_refusal_names_the_limit",
            "--nocapture",
        ])
        .env(MEMLOCK_CHILD, "1")
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("CHILD-OK") {
        common::say_skipped(&format!(
            "skipped a_memlock_refusal_names_the_limit: nothing refused here ({})",
            text.lines().find(|l| l.contains("CHILD-OK")).unwrap_or("")
        ));
        return;
    }
    let line = text
        .lines()
        .find(|l| l.contains("CHILD-ERR"))
        .unwrap_or_else(|| panic!("no result from the child: {text}"));
    assert!(
        line.contains("OutOfMemory") && line.contains("RLIMIT_MEMLOCK (65536 bytes)"),
        "{line}"
    );
}

/// Drops `CAP_IPC_LOCK` from the calling thread's effective set (root is exempt from
/// `RLIMIT_MEMLOCK` with it), where `capset` allows; the child only.
fn drop_ipc_lock() {
    const CAP_IPC_LOCK: u32 = 14;
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut head = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget fills a v3 header's two data records, both valid here.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut head, data.as_mut_ptr()) } != 0 {
        return;
    }
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    // SAFETY: as above; capset reads the header and the two records.
    let _ = unsafe { libc::syscall(libc::SYS_capset, &raw mut head, data.as_ptr()) };
}

/// Inside a BH: the pool is made there, and a fixed read started there (polled once)
/// and finished outside.
#[test]
fn pool_and_fixed_read_made_inside_a_bh() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    let fd = r.as_raw_fd();
    let c = ctx.clone();
    let read = file_common::started_in_bh(&ctx, move || {
        let pool = FixedBufPool::new(&c, 1, 64).expect("a pool inside a BH");
        c.read_fixed_at(fd, pool.try_get().unwrap(), 0)
    });
    write_fd(w.as_raw_fd(), b"bh");
    let (res, buf) = ctx.block_on(read);
    assert_eq!(&buf[..res.unwrap()], b"bh");
}
