//! A `File`'s descriptor is closed exactly once and never under an operation in
//! flight ([FL2] and [FL3] (`fs/file.rs`)), on the back end this run selects: dropped
//! plainly, closed explicitly, dropped while each kind of operation is in flight (its
//! future dropped first, racing the cancel), dropped on another thread, outliving its
//! context, and with its context dropped under a parked read. After the close, a canary
//! file is put on the same descriptor number: a second close would take it away.
#![cfg(not(loom))]

mod common;
mod file_common;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use aioctx::aio::{AioContext, FallocateMode, File, OpenOptions};
use file_common::{Scratch, install_canary, is_open, remove_canary};

/// Descriptor numbers are process-wide: the tests of this binary take turns, so that
/// no other test opens a file on a number one of them watches.
static FD_LOCK: Mutex<()> = Mutex::new(());

fn fd_lock() -> MutexGuard<'static, ()> {
    FD_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

fn rw_create() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    o
}

/// Runs the loop without sleeping until `fd` is closed (a ring `CLOSE`, or the last
/// operation's completion, closes it).
fn poll_until_closed(ctx: &AioContext, fd: RawFd) {
    let start = Instant::now();
    while is_open(fd) {
        assert!(
            start.elapsed() < common::HANG_LIMIT,
            "descriptor {fd} was never closed"
        );
        ctx.poll(false);
        std::thread::yield_now();
    }
}

/// Checks after the first close that nothing closes `fd`'s number again: runs the loop
/// a while, drops the context (which reaps everything), then looks at the canary.
fn no_second_close(ctx: Arc<AioContext>, fd: RawFd, scratch: &Scratch) {
    let id = install_canary(fd, &scratch.path("canary"));
    for _ in 0..20 {
        ctx.poll(false);
    }
    drop(ctx);
    remove_canary(fd, id);
}

#[test]
fn a_dropped_file_is_closed_once() {
    let _l = fd_lock();
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("a_dropped_file_is_closed_once", &ctx);
    let scratch = Scratch::new("life-drop");
    let file = ctx
        .block_on(rw_create().open(&ctx, scratch.path("f")))
        .unwrap();
    let fd = file.as_raw_fd();
    drop(file);
    poll_until_closed(&ctx, fd);
    no_second_close(ctx, fd, &scratch);
}

#[test]
fn an_explicitly_closed_file_is_closed_once() {
    let _l = fd_lock();
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("explicit close", &ctx);
    let scratch = Scratch::new("life-close");
    let file = ctx
        .block_on(rw_create().open(&ctx, scratch.path("f")))
        .unwrap();
    let fd = file.as_raw_fd();
    ctx.block_on(file.close()).unwrap();
    assert!(
        !is_open(fd),
        "close() returned before the descriptor was closed"
    );
    no_second_close(ctx, fd, &scratch);
}

type Op<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Every operation of a `File`, as a future whose result is ignored.
fn ops(file: &File) -> Vec<(&'static str, Op<'_>)> {
    vec![
        (
            "read_at",
            Box::pin(async { drop(file.read_at(Vec::with_capacity(4096), 0).await) }),
        ),
        (
            "write_at",
            Box::pin(async { drop(file.write_at(vec![1u8; 4096], 0).await) }),
        ),
        (
            "readv_at",
            Box::pin(async { drop(file.readv_at(vec![vec![0u8; 64]; 4], 0).await) }),
        ),
        (
            "writev_at",
            Box::pin(async { drop(file.writev_at(vec![vec![2u8; 64]; 4], 0).await) }),
        ),
        ("fsync", Box::pin(async { drop(file.fsync().await) })),
        (
            "fdatasync",
            Box::pin(async { drop(file.fdatasync().await) }),
        ),
        (
            "sync_file_range",
            Box::pin(async {
                drop(
                    file.sync_file_range(0, 0, libc::SYNC_FILE_RANGE_WRITE)
                        .await,
                )
            }),
        ),
        (
            "fallocate",
            Box::pin(async {
                drop(
                    file.fallocate(FallocateMode::Allocate { keep_size: false }, 0, 65536)
                        .await,
                )
            }),
        ),
        (
            "set_len",
            Box::pin(async { drop(file.set_len(8192).await) }),
        ),
        ("metadata", Box::pin(async { drop(file.metadata().await) })),
    ]
}

/// Each operation submitted (one poll), its future dropped at once (racing the cancel)
/// and then its `File` dropped: the descriptor outlives the operation and is closed
/// exactly once, by whichever of the two lets go last.
#[test]
fn each_operation_dropped_mid_flight_then_its_file() {
    let _l = fd_lock();
    let scratch = Scratch::new("life-midflight");
    let names: Vec<&str> = {
        let ctx = common::new_ctx();
        let file = ctx
            .block_on(rw_create().open(&ctx, scratch.path("names")))
            .unwrap();
        ops(&file).into_iter().map(|(n, _)| n).collect()
    };
    for (i, name) in names.iter().enumerate() {
        let ctx = common::new_ctx();
        let _w = common::Watchdog::for_ctx(name, &ctx);
        let file = ctx
            .block_on(rw_create().open(&ctx, scratch.path(name)))
            .unwrap();
        let fd = file.as_raw_fd();
        {
            let mut all = ops(&file);
            let (_, mut fut) = all.swap_remove(i);
            drop(all);
            // Submitted at the first poll.
            let _ = common::poll_once(&mut fut);
            drop(fut);
        }
        drop(file);
        poll_until_closed(&ctx, fd);
        no_second_close(ctx, fd, &scratch);
    }
}

/// A read parked on an empty pipe holds the descriptor: dropping the `File` does not
/// close it; dropping the read (its cancel) then closes it, once.
#[test]
fn a_parked_read_keeps_the_descriptor_until_it_is_cancelled() {
    let _l = fd_lock();
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("parked read", &ctx);
    let scratch = Scratch::new("life-parked");
    let (r, w) = common::pipe();
    let file = File::from_owned_fd(&ctx, r);
    let fd = file.as_raw_fd();
    let mut fut = Box::pin(file.read_at(Vec::with_capacity(16), 0));
    assert!(common::poll_once(&mut fut).is_pending());
    for _ in 0..5 {
        ctx.poll(false);
    }
    // The future borrows the file, so it goes first (a task owning both is the next
    // test).
    drop(fut);
    drop(file);
    poll_until_closed(&ctx, fd);
    no_second_close(ctx, fd, &scratch);
    drop(w);
}

/// The same with the `File` owned by a task whose read parks: the task is dropped
/// with its future, the read cancelled, the descriptor closed once.
#[test]
fn a_task_owning_a_file_is_dropped_with_its_read_parked() {
    let _l = fd_lock();
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("task-owned file", &ctx);
    let scratch = Scratch::new("life-task");
    let (r, _w) = common::pipe();
    let file = File::from_owned_fd(&ctx, r);
    let fd = file.as_raw_fd();
    let task = ctx.spawn(async move {
        let (res, _) = file.read_at(Vec::with_capacity(16), 0).await;
        res
    });
    for _ in 0..5 {
        ctx.poll(false);
    }
    assert!(is_open(fd), "closed under a parked read");
    drop(task); // detaches; the task runs on
    // Dropping the context cancels the task: its future, the read and the File go.
    drop(ctx);
    assert!(!is_open(fd), "the context's drop left the descriptor open");
    let id = install_canary(fd, &scratch.path("canary"));
    remove_canary(fd, id);
}

/// A `File` dropped while its context drops under a parked read: the context's drop
/// reaps the read (`ECANCELED`), and the file, dropped after, closes with `close(2)`.
#[test]
fn a_file_outlives_its_context() {
    let _l = fd_lock();
    let ctx = common::new_ctx();
    let scratch = Scratch::new("life-outlive");
    let file = ctx
        .block_on(rw_create().open(&ctx, scratch.path("f")))
        .unwrap();
    let fd = file.as_raw_fd();
    drop(ctx);
    // Its operations fail clearly (checked without a context: a fresh executor).
    let (res, _) = futures_lite_block_on(file.read_at(Vec::with_capacity(8), 0));
    let e = res.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    let e = futures_lite_block_on(file.fsync()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    assert!(is_open(fd));
    drop(file);
    assert!(!is_open(fd), "close(2) on drop without a context");
    let id = install_canary(fd, &scratch.path("canary"));
    remove_canary(fd, id);
}

/// A `File` dropped on a thread that is not its context's home closes with `close(2)`
/// right there.
#[test]
fn a_file_dropped_off_its_home_thread() {
    let _l = fd_lock();
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("off home", &ctx);
    let scratch = Scratch::new("life-offhome");
    let file = ctx
        .block_on(rw_create().open(&ctx, scratch.path("f")))
        .unwrap();
    let fd = file.as_raw_fd();
    std::thread::spawn(move || drop(file)).join().unwrap();
    assert!(!is_open(fd));
    no_second_close(ctx, fd, &scratch);
}

/// An explicit `close` while a dropped operation still holds the descriptor returns
/// `Ok`, and the descriptor closes when that operation completes.
#[test]
fn close_while_a_dropped_read_is_in_flight() {
    let _l = fd_lock();
    let ctx = common::new_ctx();
    let _w = common::Watchdog::for_ctx("close in flight", &ctx);
    let scratch = Scratch::new("life-closeflight");
    let (r, _w) = common::pipe();
    let file = File::from_owned_fd(&ctx, r);
    let fd = file.as_raw_fd();
    let task = {
        let c = ctx.clone();
        ctx.spawn(async move {
            {
                let mut read = Box::pin(file.read_at(Vec::with_capacity(16), 0));
                assert!(common::poll_once(&mut read).is_pending());
                // Dropped in flight: its cancel is on its way.
            }
            drop(c);
            file.close().await
        })
    };
    ctx.block_on(task).unwrap().unwrap();
    poll_until_closed(&ctx, fd);
    no_second_close(ctx, fd, &scratch);
}

/// Polls `fut` to completion on this thread without a context (for a `File` whose
/// context is gone: its operations resolve at their first poll).
fn futures_lite_block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = Box::pin(fut);
    match common::poll_once(&mut fut) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("an operation of a context-less File pended"),
    }
}

/// A second close right after the first (at the completion that follows the kernel's
/// `CLOSE`) would be invisible to a canary installed afterwards. io_uring: a raw `NOP`
/// queued just before the `File`'s drop queues its `CLOSE` completes first, and its
/// callback — run after the kernel closed the descriptor, before the `CLOSE`'s
/// completion — puts the canary on the number; the `CLOSE`'s completion must leave it.
#[test]
fn the_ring_close_completion_does_not_close_again() {
    let _l = fd_lock();
    let Some(ctx) = common::uring_ctx(
        "the_ring_close_completion_does_not_close_again",
        AioContext::builder(),
    ) else {
        return;
    };
    let _w = common::Watchdog::for_ctx("ring close", &ctx);
    let scratch = Scratch::new("life-ringclose");
    let file = ctx
        .block_on(rw_create().open(&ctx, scratch.path("f")))
        .unwrap();
    let fd = file.as_raw_fd();
    let canary = scratch.path("canary");
    let installed = Arc::new(Mutex::new(None));
    let slot = installed.clone();
    // SAFETY: a NOP names no memory.
    unsafe {
        ctx.submit_raw(
            aioctx::aio::io_uring::opcode::Nop::new().build(),
            Box::new(move |_, _| {
                // The kernel ran the CLOSE queued after this NOP in the same submit.
                let start = Instant::now();
                while is_open(fd) {
                    assert!(start.elapsed() < common::HANG_LIMIT, "CLOSE never ran");
                    std::thread::yield_now();
                }
                *slot.lock().unwrap() = Some(install_canary(fd, &canary));
            }),
        )
    }
    .unwrap();
    drop(file); // queues IORING_OP_CLOSE behind the NOP
    let start = Instant::now();
    while installed.lock().unwrap().is_none() {
        assert!(start.elapsed() < common::HANG_LIMIT, "NOP never completed");
        ctx.poll(false);
    }
    for _ in 0..5 {
        ctx.poll(false);
    }
    drop(ctx);
    let id = installed.lock().unwrap().take().unwrap();
    remove_canary(fd, id);
}

/// How many descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Path operations and opens dropped mid-flight (racing the cancel): a file opened
/// for a future that is gone is closed, never leaked; the paths are kept by the
/// operations until their completions (run under ASan to check the memory side).
#[test]
fn path_operations_and_opens_dropped_mid_flight() {
    let _l = fd_lock();
    let scratch = Scratch::new("life-paths");
    for name in ["a", "b", "c"] {
        std::fs::write(scratch.path(name), b"x").unwrap();
    }
    let before = open_fds();
    for round in 0..20 {
        let ctx = common::new_ctx();
        let _w = common::Watchdog::for_ctx("paths dropped", &ctx);
        let mut futs: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = vec![
            Box::pin({
                let f = aioctx::aio::File::open(&ctx, scratch.path("a"));
                async move { drop(f.await) }
            }),
            Box::pin({
                let f = rw_create().open(&ctx, scratch.path(&format!("new{round}")));
                async move { drop(f.await) }
            }),
            Box::pin({
                let f = ctx.mkdir(scratch.path(&format!("d{round}")), 0o700);
                async move { drop(f.await) }
            }),
            Box::pin({
                let f = ctx.rename(scratch.path("b"), scratch.path("c"));
                async move { drop(f.await) }
            }),
            Box::pin({
                let f = ctx.unlink(scratch.path(&format!("new{}", round.max(1) - 1)));
                async move { drop(f.await) }
            }),
        ];
        for f in &mut futs {
            let _ = common::poll_once(f);
        }
        if round % 2 == 0 {
            ctx.poll(false);
        }
        drop(futs);
        // The context's drop reaps every completion (and waits for pool jobs).
        drop(ctx);
    }
    assert_eq!(open_fds(), before, "a descriptor leaked");
}

/// Each operation submitted, then its context dropped under it: the drop reaps the
/// operation (its future then resolves at once, with the real result or
/// `ECANCELED`), and the `File`, dropped after, closes its descriptor with `close(2)`,
/// exactly once.
#[test]
fn each_operation_with_its_context_dropped_under_it() {
    let _l = fd_lock();
    let scratch = Scratch::new("life-ctxdrop");
    let count = {
        let ctx = common::new_ctx();
        let file = ctx
            .block_on(rw_create().open(&ctx, scratch.path("names")))
            .unwrap();
        ops(&file).len()
    };
    for i in 0..count {
        let ctx = common::new_ctx();
        let file = ctx
            .block_on(rw_create().open(&ctx, scratch.path(&format!("f{i}"))))
            .unwrap();
        let fd = file.as_raw_fd();
        {
            let mut all = ops(&file);
            let (name, mut fut) = all.swap_remove(i);
            drop(all);
            let _ = common::poll_once(&mut fut);
            let _w = common::watchdog("context drop under an operation", 30);
            drop(ctx);
            assert!(
                common::poll_once(&mut fut).is_ready(),
                "{name}: not resolved after its context's drop"
            );
        }
        assert!(is_open(fd));
        drop(file);
        assert!(!is_open(fd), "close(2) when the context is gone");
        let id = install_canary(fd, &scratch.path("canary"));
        remove_canary(fd, id);
    }
}
