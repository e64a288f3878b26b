//! Linked operations (write → fsync) on the back end this run selects: both steps'
//! results, a failed first step leaving the second `ECANCELED`, a short write breaking
//! the chain (small tmpfs, as root), a chain dropped mid-flight (its buffer freed once,
//! after its completions), run from a task spawned by a bottom half, and a context
//! dropped under a parked chain.
#![cfg(not(loom))]

mod common;
mod file_common;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use aioctx::aio::{IoBuf, OpenOptions};
use file_common::{Scratch, TmpfsMount};

fn rw_create() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    o
}

/// A buffer that counts its drops.
struct Counted {
    data: Vec<u8>,
    drops: Arc<AtomicUsize>,
}

// SAFETY: the Vec's heap bytes do not move with the value; `len` are initialized.
unsafe impl IoBuf for Counted {
    fn stable_ptr(&self) -> *const u8 {
        self.data.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.data.len()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // SeqCst: read by the test thread after the loop ran (no other pairing).
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn write_then_fsync_reports_both_steps() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("write_then_fsync_reports_both_steps", &ctx);
    let scratch = Scratch::new("link-ok");
    ctx.block_on(async {
        let file = rw_create().open(&ctx, scratch.path("f")).await.unwrap();
        let (wrote, synced, buf) = file
            .write_at_then_fsync(b"durable".to_vec(), 3, false)
            .await;
        assert_eq!(wrote.unwrap(), 7);
        synced.unwrap();
        assert_eq!(buf, b"durable");
        let (wrote, synced, _) = ctx
            .write_at_then_fsync(file.as_raw_fd(), b"!".to_vec(), 10, true)
            .await;
        assert_eq!(wrote.unwrap(), 1);
        synced.unwrap();
        file.close().await.unwrap();
    });
    assert_eq!(std::fs::read(scratch.path("f")).unwrap(), b"\0\0\0durable!");
}

#[test]
fn a_failed_write_leaves_the_fsync_unrun() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("a_failed_write_leaves_the_fsync_unrun", &ctx);
    let scratch = Scratch::new("link-fail");
    std::fs::write(scratch.path("f"), b"x").unwrap();
    ctx.block_on(async {
        let file = aioctx::aio::File::open(&ctx, scratch.path("f"))
            .await
            .unwrap();
        let (wrote, synced, _) = file.write_at_then_fsync(b"no".to_vec(), 0, false).await;
        assert_eq!(wrote.unwrap_err().raw_os_error(), Some(libc::EBADF));
        let e = synced.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
        // A closed descriptor: the same on the raw-fd form.
        let (_r, w) = common::pipe();
        let fd = w.as_raw_fd();
        drop((_r, w));
        let (wrote, synced, _) = ctx.write_at_then_fsync(fd, b"no".to_vec(), 0, true).await;
        assert_eq!(wrote.unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(synced.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    });
}

#[test]
fn a_short_write_breaks_the_chain() {
    let mnt = match TmpfsMount::new("link-short", "64k") {
        Ok(m) => m,
        Err(why) => {
            common::say_skipped(&format!("skipped a_short_write_breaks_the_chain: {why}"));
            return;
        }
    };
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("a_short_write_breaks_the_chain", &ctx);
    ctx.block_on(async {
        let file = rw_create().open(&ctx, mnt.dir.join("f")).await.unwrap();
        let (wrote, synced, _) = file.write_at_then_fsync(vec![1u8; 1 << 20], 0, false).await;
        match wrote {
            // Short: the chain is broken.
            Ok(n) => {
                assert!(n < 1 << 20, "1 MiB fit in a 64 KiB tmpfs");
                let e = synced.unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                assert_eq!(synced.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
            }
        }
        file.close().await.unwrap();
    });
}

/// A chain whose write waits on a full pipe, dropped: both steps are cancelled, and
/// the buffer is freed exactly once, after the completions.
#[test]
fn a_dropped_chain_frees_its_buffer_once() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("a_dropped_chain_frees_its_buffer_once", &ctx);
    let (r, w) = common::pipe();
    // Fill the pipe so the write waits.
    // SAFETY: F_SETFL on our own descriptor.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let chunk = [0u8; 4096];
    // SAFETY: `chunk` is valid for reads of its length.
    while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    // SAFETY: as above.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
    let drops = Arc::new(AtomicUsize::new(0));
    let buf = Counted {
        data: vec![9u8; 100],
        drops: drops.clone(),
    };
    let mut chain = Box::pin(ctx.write_at_then_fsync(w.as_raw_fd(), buf, 0, false));
    assert!(common::poll_once(&mut chain).is_pending());
    for _ in 0..5 {
        ctx.poll(false);
    }
    assert_eq!(drops.load(Ordering::SeqCst), 0, "freed while in flight");
    drop(chain);
    let start = std::time::Instant::now();
    while drops.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < common::HANG_LIMIT,
            "the buffer was never freed"
        );
        ctx.poll(false);
    }
    // Data written after the drop is not taken by the cancelled write: the pipe still
    // holds only the filler.
    for _ in 0..5 {
        ctx.poll(false);
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop((r, w));
}

#[test]
fn a_chain_from_a_task_spawned_by_a_bottom_half() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("chain from a BH", &ctx);
    let scratch = Scratch::new("link-bh");
    let done = Arc::new(AtomicBool::new(false));
    let (c, d, path) = (ctx.clone(), done.clone(), scratch.path("f"));
    ctx.schedule_oneshot(move || {
        let c2 = c.clone();
        drop(c.spawn(async move {
            let file = rw_create().open(&c2, &path).await.unwrap();
            let (wrote, synced, _) = file.write_at_then_fsync(b"bh".to_vec(), 0, true).await;
            assert_eq!(wrote.unwrap(), 2);
            synced.unwrap();
            // SeqCst: read by the polling thread (no other pairing).
            d.store(true, Ordering::SeqCst);
        }));
    });
    while !done.load(Ordering::SeqCst) {
        ctx.poll(true);
    }
    assert_eq!(std::fs::read(scratch.path("f")).unwrap(), b"bh");
}

/// A context dropped while a chain waits (write on a full pipe) in a task: both steps
/// complete (`ECANCELED`) during the drop, and the buffer is freed once.
#[test]
fn a_context_dropped_under_a_parked_chain() {
    let ctx = common::new_ctx();
    let (r, w) = common::pipe();
    // SAFETY: F_SETFL on our own descriptor.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let chunk = [0u8; 4096];
    // SAFETY: `chunk` is valid for reads of its length.
    while unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    // SAFETY: as above.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
    let drops = Arc::new(AtomicUsize::new(0));
    let buf = Counted {
        data: vec![9u8; 100],
        drops: drops.clone(),
    };
    let fut = ctx.write_at_then_fsync(w.as_raw_fd(), buf, 0, false);
    let task = ctx.spawn(async move {
        let (wrote, synced, _) = fut.await;
        (wrote.map_err(|e| e.kind()), synced.map_err(|e| e.kind()))
    });
    for _ in 0..5 {
        ctx.poll(false);
    }
    drop(task);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(ctx);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "freed once by the context's drop"
    );
    drop((r, w));
}

/// On a one-entry ring the chain cannot be linked (two entries do not fit): it runs
/// step by step with the same rule.
#[test]
fn a_chain_on_a_one_entry_ring_runs_step_by_step() {
    let Some(ctx) = common::uring_ctx(
        "a_chain_on_a_one_entry_ring_runs_step_by_step",
        aioctx::aio::AioContext::builder().ring_entries(1),
    ) else {
        return;
    };
    let _w = common::Watchdog::for_ctx("one-entry ring chain", &ctx);
    let scratch = Scratch::new("link-one");
    std::fs::write(scratch.path("ro"), b"x").unwrap();
    ctx.block_on(async {
        let file = rw_create().open(&ctx, scratch.path("f")).await.unwrap();
        let (wrote, synced, _) = file.write_at_then_fsync(b"step".to_vec(), 0, false).await;
        assert_eq!(wrote.unwrap(), 4);
        synced.unwrap();
        let ro = aioctx::aio::File::open(&ctx, scratch.path("ro"))
            .await
            .unwrap();
        let (wrote, synced, _) = ro.write_at_then_fsync(b"no".to_vec(), 0, false).await;
        assert_eq!(wrote.unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(synced.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
    });
    assert_eq!(std::fs::read(scratch.path("f")).unwrap(), b"step");
}

#[test]
fn read_then_write_copies_and_a_short_read_breaks_the_chain() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("read_then_write", &ctx);
    let scratch = Scratch::new("link-copy");
    std::fs::write(scratch.path("src"), b"0123456789").unwrap();
    ctx.block_on(async {
        let src = aioctx::aio::File::open(&ctx, scratch.path("src"))
            .await
            .unwrap();
        let dst = rw_create().open(&ctx, scratch.path("dst")).await.unwrap();
        let (read, wrote, buf) = ctx
            .read_at_then_write_at(
                src.as_raw_fd(),
                2,
                dst.as_raw_fd(),
                0,
                Vec::with_capacity(6),
            )
            .await;
        assert_eq!((read.unwrap(), wrote.unwrap()), (6, 6));
        assert_eq!(buf, b"234567");
        // Past the end: a short read, the write never runs, the bytes read are kept.
        let (read, wrote, buf) = ctx
            .read_at_then_write_at(
                src.as_raw_fd(),
                7,
                dst.as_raw_fd(),
                100,
                Vec::with_capacity(8),
            )
            .await;
        assert_eq!(read.unwrap(), 3);
        assert_eq!(wrote.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        assert_eq!(buf, b"789");
        dst.close().await.unwrap();
    });
    assert_eq!(std::fs::read(scratch.path("dst")).unwrap(), b"234567");
}

/// A read → write chain whose read waits on an empty pipe, dropped: the shared buffer
/// is freed exactly once, after both steps completed.
#[test]
fn a_dropped_read_then_write_frees_its_buffer_once() {
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("dropped read_then_write", &ctx);
    let scratch = Scratch::new("link-rwdrop");
    let dst = std::fs::File::create(scratch.path("dst")).unwrap();
    let (r, w) = common::pipe();
    let drops = Arc::new(AtomicUsize::new(0));
    let buf = CountedMut {
        data: vec![0u8; 16],
        drops: drops.clone(),
    };
    let mut chain = Box::pin(ctx.read_at_then_write_at(r.as_raw_fd(), 0, dst.as_raw_fd(), 0, buf));
    assert!(common::poll_once(&mut chain).is_pending());
    for _ in 0..5 {
        ctx.poll(false);
    }
    drop(chain);
    let start = std::time::Instant::now();
    while drops.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < common::HANG_LIMIT, "never freed");
        ctx.poll(false);
    }
    common::write_fd(w.as_raw_fd(), b"late");
    for _ in 0..5 {
        ctx.poll(false);
    }
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::read(scratch.path("dst")).unwrap(),
        b"",
        "the write never ran"
    );
}

/// A writable buffer that counts its drops.
struct CountedMut {
    data: Vec<u8>,
    drops: Arc<AtomicUsize>,
}

// SAFETY: the Vec's heap bytes do not move with the value; `len` are initialized and
// writable.
unsafe impl IoBuf for CountedMut {
    fn stable_ptr(&self) -> *const u8 {
        self.data.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.data.len()
    }
}

// SAFETY: as above.
unsafe impl aioctx::aio::IoBufMut for CountedMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.data.as_mut_ptr()
    }
}

impl Drop for CountedMut {
    fn drop(&mut self) {
        // SeqCst: read by the test thread after the loop ran (no other pairing).
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}
