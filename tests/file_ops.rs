//! Every `File` operation and path operation, on the back end this run selects
//! (io_uring by default, `AIOCTX_BACKEND=epoll` for the fallback): results, bad input
//! (`EBADF`, `EINVAL`, `NotFound`, `InvalidInput`, `ENOSPC` from a small tmpfs when
//! running as root), and the same battery run inside a task and inside a task spawned
//! from a bottom half's callback.
#![cfg(not(loom))]

mod common;
mod file_common;

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aioctx::aio::{AioContext, FallocateMode, File, FileType, OpenOptions};
use file_common::{Scratch, TmpfsMount};

fn rw_create() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640);
    o
}

/// Every operation once, checking results; returns the first failure.
async fn battery(ctx: Arc<AioContext>, dir: PathBuf) -> io::Result<()> {
    let path = dir.join("data");
    let file = rw_create().open(&ctx, &path).await?;
    let meta = file.metadata().await?;
    assert_eq!(meta.file_type(), FileType::File);
    assert_eq!(meta.len(), 0);
    assert_eq!(meta.mode() & 0o777 & !0o022, 0o640 & !0o022);
    assert!(meta.blksize() > 0);

    let (res, _) = file.write_all_at(b"hello, world".to_vec(), 0).await;
    res?;
    let (res, _) = file
        .writev_at(vec![b"ab".to_vec(), b"cd".to_vec()], 12)
        .await;
    assert_eq!(res?, 4);
    let (res, buf) = file.write_at(&b"!"[..], 16).await;
    assert_eq!((res?, buf), (1, &b"!"[..]));

    // Reads fill spare capacity: no zeroed buffer needed, the length is set.
    let (res, buf) = file.read_at(Vec::with_capacity(5), 7).await;
    assert_eq!(res?, 5);
    assert_eq!(buf, b"world");
    let (res, buf) = file.read_exact_at(Vec::with_capacity(17), 0).await;
    res?;
    assert_eq!(buf, b"hello, worldabcd!");
    let (res, bufs) = file
        .readv_at(vec![Vec::with_capacity(5), Vec::with_capacity(20)], 0)
        .await;
    assert_eq!(res?, 17);
    assert_eq!(bufs, [b"hello".to_vec(), b", worldabcd!".to_vec()]);
    let (res, buf) = file.read_exact_at(Vec::with_capacity(10), 10).await;
    let err = res.expect_err("read_exact_at past the end");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(buf, b"ldabcd!", "the bytes read before the end are kept");

    file.fsync().await?;
    file.fdatasync().await?;
    file.sync_file_range(0, 0, libc::SYNC_FILE_RANGE_WRITE)
        .await?;

    file.set_len(4096).await?;
    assert_eq!(file.metadata().await?.len(), 4096);
    file.set_len(5).await?;
    assert_eq!(file.metadata().await?.len(), 5);
    file.fallocate(FallocateMode::Allocate { keep_size: false }, 0, 8192)
        .await?;
    assert_eq!(file.metadata().await?.len(), 8192);
    match file.fallocate(FallocateMode::PunchHole, 0, 4096).await {
        Ok(()) => {
            let (res, buf) = file.read_exact_at(Vec::with_capacity(5), 0).await;
            res?;
            assert_eq!(buf, [0; 5], "a punched hole reads as zeros");
        }
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => return Err(e),
    }
    match file
        .fallocate(FallocateMode::ZeroRange { keep_size: true }, 4096, 4096)
        .await
    {
        Ok(()) => assert_eq!(file.metadata().await?.len(), 8192),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => return Err(e),
    }
    file.close().await?;

    // Path operations.
    let sub = dir.join("sub");
    ctx.mkdir(&sub, 0o750).await?;
    assert!(std::fs::metadata(&sub)?.is_dir());
    let moved = sub.join("moved");
    ctx.rename(&path, &moved).await?;
    assert!(!path.exists() && moved.exists());
    let file = File::open(&ctx, &moved).await?;
    assert_eq!(file.metadata().await?.len(), 8192);
    drop(file); // closed through the ring (io_uring) or close(2)
    ctx.unlink(&moved).await?;
    ctx.remove_dir(&sub).await?;
    assert!(!sub.exists());

    // Append mode ignores offsets.
    let log = dir.join("log");
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&ctx, &log)
        .await?;
    for part in [&b"one,"[..], b"two"] {
        let (res, _) = file.write_at(part, 0).await;
        res?;
    }
    file.close().await?;
    assert_eq!(std::fs::read(&log)?, b"one,two");

    // O_DSYNC and custom flags reach open(2).
    let file = rw_create()
        .dsync(true)
        .custom_flags(libc::O_NOATIME)
        .open(&ctx, dir.join("dsync"))
        .await;
    match file {
        Ok(file) => {
            // SAFETY: F_GETFL reads the descriptor's status flags.
            let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(flags & libc::O_DSYNC, 0, "O_DSYNC set");
        }
        // O_NOATIME needs ownership or CAP_FOWNER; we created the file, so EPERM is a bug.
        Err(e) => return Err(e),
    }
    Ok(())
}

#[test]
fn every_operation_through_block_on() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("every_operation_through_block_on", &ctx);
    let scratch = Scratch::new("file-ops");
    ctx.block_on(battery(ctx.clone(), scratch.dir.clone()))
        .expect("battery");
}

#[test]
fn every_operation_inside_a_spawned_task() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("every_operation_inside_a_spawned_task", &ctx);
    let scratch = Scratch::new("file-task");
    let task = ctx.spawn(battery(ctx.clone(), scratch.dir.clone()));
    ctx.block_on(task).expect("join").expect("battery");
}

#[test]
fn every_operation_from_a_task_spawned_by_a_bottom_half() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("from_a_bottom_half", &ctx);
    let scratch = Scratch::new("file-bh");
    let done = Arc::new(AtomicBool::new(false));
    let (c, d, dir) = (ctx.clone(), done.clone(), scratch.dir.clone());
    ctx.schedule_oneshot(move || {
        // Nested inside the BH callback: the operations start from here, callback
        // style, and complete while the loop runs on.
        let c2 = c.clone();
        drop(c.spawn(async move {
            battery(c2, dir).await.expect("battery");
            d.store(true, Ordering::SeqCst);
        }));
    });
    while !done.load(Ordering::SeqCst) {
        ctx.poll(true);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("bad_input_is_a_clear_error", &ctx);
    let scratch = Scratch::new("file-bad");
    ctx.block_on(async {
        // Nonexistent path.
        let e = File::open(&ctx, scratch.path("missing")).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = ctx.unlink(scratch.path("missing")).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = ctx
            .rename(scratch.path("missing"), scratch.path("x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = ctx.mkdir(scratch.path("a/b"), 0o700).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        ctx.mkdir(scratch.path("d"), 0o700).await.unwrap();
        let e = ctx.mkdir(scratch.path("d"), 0o700).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        // A NUL byte in a path never reaches the kernel.
        let e = ctx.unlink("a\0b").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
        // Options that ask for no access.
        let e = OpenOptions::new()
            .open(&ctx, scratch.path("x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let e = OpenOptions::new()
            .read(true)
            .create(true)
            .open(&ctx, scratch.path("x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        // EINVAL from the kernel: O_TMPFILE without write access.
        let e = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TMPFILE)
            .open(&ctx, &scratch.dir)
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");

        let file = rw_create().open(&ctx, scratch.path("f")).await.unwrap();
        // EINVAL: unknown sync_file_range flags, a zero-length fallocate.
        let e = file.sync_file_range(0, 0, 0xff).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let e = file
            .fallocate(FallocateMode::Allocate { keep_size: false }, 0, 0)
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        drop(file);

        // EBADF: writing a file open read-only, truncating it.
        let file = File::open(&ctx, scratch.path("f")).await.unwrap();
        let (res, _) = file.write_at(b"x".to_vec(), 0).await;
        assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EBADF));
        let e = file.set_len(0).await.unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::EBADF | libc::EINVAL)),
            "{e}"
        );
        file.close().await.unwrap();

        // EBADF: the raw-fd operations on a closed descriptor.
        let (_r, w) = common::pipe();
        let fd = w.as_raw_fd();
        drop((_r, w));
        let e = ctx.fsync(fd).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    });
}

#[test]
fn enospc_from_a_small_tmpfs() {
    let mnt = match TmpfsMount::new("enospc", "64k") {
        Ok(m) => m,
        Err(why) => {
            common::say_skipped(&format!("skipped enospc_from_a_small_tmpfs: {why}"));
            return;
        }
    };
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("enospc_from_a_small_tmpfs", &ctx);
    ctx.block_on(async {
        let file = rw_create().open(&ctx, mnt.dir.join("big")).await.unwrap();
        let e = file
            .fallocate(FallocateMode::Allocate { keep_size: false }, 0, 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let (res, _) = file.write_all_at(vec![7u8; 1 << 20], 0).await;
        let e = res.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        file.close().await.unwrap();
    });
}
