//! `AlignedBuf` for O_DIRECT: alignment and length checks, the file's alignment from
//! statx, and O_DIRECT reads into a reused buffer on both back ends — in a task, in a
//! task spawned by a callback, and with the context dropped under a read.
#![cfg(not(loom))]

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aioctx::aio::{AlignedBuf, IoBuf, dio_alignment};
use common::{Watchdog, new_ctx, say_skipped, tempfile};

const BLOCKS: usize = 16;
const BS: usize = 4096;

/// A file of `BLOCKS` blocks, block `i` filled with byte `i`, opened again with
/// O_DIRECT; `None` (with a printed line) where the temp dir's file system refuses
/// O_DIRECT.
fn direct_file(test: &str) -> Option<(common::TempFile, std::fs::File)> {
    let mut t = tempfile(test);
    for i in 0..BLOCKS {
        t.file.write_all(&[i as u8; BS]).unwrap();
    }
    t.file.sync_all().unwrap();
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&t.path)
    {
        Ok(f) => Some((t, f)),
        Err(e) => {
            say_skipped(&format!(
                "skipped {test}: the temp dir refuses O_DIRECT ({e})"
            ));
            None
        }
    }
}

#[test]
fn bad_alignment_and_length_are_refused() {
    for (len, align) in [(4096, 3), (4096, 0), (0, 4096)] {
        let e = AlignedBuf::new(len, align).expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("AlignedBuf"), "{e}");
    }
    let b = AlignedBuf::new(100, 512).unwrap();
    assert_eq!(b.as_ptr() as usize % 512, 0);
    assert_eq!((b.len(), b.align(), b.bytes_init()), (100, 512, 100));
    assert!(b.check_offset(1024).is_ok());
    let e = b.check_offset(100).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("offset 100"), "{e}");
}

#[test]
fn alignment_comes_from_the_file() {
    let Some((_t, f)) = direct_file("aligned_from_file") else {
        return;
    };
    let (mem, offset) = dio_alignment(&f).unwrap();
    assert!(mem.is_power_of_two() && offset.is_power_of_two());
    let b = AlignedBuf::for_file(&f, BS).unwrap();
    // The larger of the two: a device may not honour a memory alignment below its
    // logical block size (zram on Linux 6.18 writes whole pages around such a buffer).
    assert_eq!(b.align(), mem.max(offset));
    assert_eq!(b.as_ptr() as usize % mem.max(offset), 0);
    if offset > 1 {
        let e = AlignedBuf::for_file(&f, BS + 1).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("offset alignment"), "{e}");
    }
}

/// Reads every block with one buffer, taken back from each completed read.
#[test]
fn direct_reads_reuse_one_buffer_in_a_task() {
    let Some((_t, f)) = direct_file("aligned_task") else {
        return;
    };
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("aligned_task", &ctx);
    let fd = f.as_raw_fd();
    let c = Arc::clone(&ctx);
    let task = ctx.spawn(async move {
        let mut buf = AlignedBuf::for_file(fd_ref(fd), BS).unwrap();
        for i in (0..BLOCKS).rev() {
            let (res, b) = c.read_at(fd, buf, (i * BS) as u64).await;
            assert_eq!(res.unwrap(), BS, "block {i}");
            assert!(b.iter().all(|&x| x == i as u8), "block {i}");
            buf = b;
        }
    });
    ctx.block_on(task).unwrap();
    drop(f);
}

fn fd_ref(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the test keeps the file open until after every use of the borrow.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

#[test]
fn direct_read_in_a_callback_spawned_task() {
    let Some((_t, f)) = direct_file("aligned_callback") else {
        return;
    };
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("aligned_callback", &ctx);
    let fd = f.as_raw_fd();
    let done = Arc::new(AtomicBool::new(false));
    let (c, d) = (Arc::clone(&ctx), Arc::clone(&done));
    ctx.schedule_oneshot(move || {
        let c2 = Arc::clone(&c);
        c.spawn(async move {
            let buf = AlignedBuf::new(BS, BS).unwrap();
            let (res, b) = c2.read_at(fd, buf, (3 * BS) as u64).await;
            assert_eq!(res.unwrap(), BS);
            assert!(b.iter().all(|&x| x == 3));
            d.store(true, Ordering::Relaxed);
        })
        .detach();
    });
    while !done.load(Ordering::Relaxed) {
        ctx.poll(true);
    }
}

/// The context goes away with a read in flight: the drop reaps it before the buffer is
/// freed (on io_uring), or the worker that runs it owns the buffer (epoll); nothing
/// is freed under the kernel, nothing hangs.
#[test]
fn context_dropped_under_a_direct_read() {
    let Some((_t, f)) = direct_file("aligned_drop") else {
        return;
    };
    for _ in 0..50 {
        let ctx = new_ctx();
        let dog = Watchdog::for_ctx("aligned_drop", &ctx);
        let mut read = ctx.read_at(f.as_raw_fd(), AlignedBuf::new(BS, BS).unwrap(), 0);
        let _ = common::poll_once(&mut read);
        drop(ctx);
        drop(read);
        drop(dog);
    }
}

/// A misaligned O_DIRECT read is refused by the kernel with EINVAL on both back ends
/// (the buffer is at the file's alignment, the offset is not).
#[test]
fn misaligned_offset_is_an_error_not_a_crash() {
    let Some((_t, f)) = direct_file("aligned_misaligned") else {
        return;
    };
    let ctx = new_ctx();
    let _dog = Watchdog::for_ctx("aligned_misaligned", &ctx);
    let buf = AlignedBuf::for_file(&f, BS).unwrap();
    assert!(buf.check_offset(1).is_err());
    let (res, _buf) = ctx.block_on(ctx.read_at(f.as_raw_fd(), buf, 1));
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EINVAL));
}
