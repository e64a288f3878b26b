//! Registered files (`FixedFileTable`, `File::register`) on the back end this run selects
//! (io_uring by default: `IORING_REGISTER_FILES` and `IOSQE_FIXED_FILE`;
//! `AIOCTX_BACKEND=epoll`: registration does nothing and the descriptor is used). Every
//! operation on a registered file, that the entry (not the descriptor) is what the
//! kernel uses, registration errors (sizes, `RLIMIT_NOFILE`, a second table, a full
//! table, another context's table, the context gone), an entry freed only after the
//! operations issued on it completed, inside a bottom half and a task, drops racing
//! completions with a live-buffer counter, a file dropped on another thread, and a
//! context dropped under a pending operation.
#![cfg(not(loom))]

mod common;
mod file_common;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use aioctx::aio::{
    AioContext, Backend, FallocateMode, File, FixedBufPool, FixedFileTable, MAX_FIXED_FILES,
    OpenOptions,
};
use common::{Watchdog, new_ctx, pipe, poll_once, wait_until, write_fd};
use file_common::{Counted, Scratch, started_in_bh};

fn pipe_file(ctx: &AioContext) -> (File, OwnedFd) {
    let (r, w) = pipe();
    (File::from_owned_fd(ctx, r), w)
}

fn uring(ctx: &AioContext) -> bool {
    ctx.backend() == Backend::IoUring
}

/// Polls `ctx` until the table has `n` free entries.
fn until_free(ctx: &AioContext, table: &FixedFileTable, n: usize) {
    wait_until("the file table's entries to come back", || {
        ctx.poll(false);
        table.available() == n
    });
}

#[test]
fn every_operation_on_a_registered_file() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let scratch = Scratch::new("registered-ops");
    let path = scratch.path("f");
    let table = FixedFileTable::new(&ctx, 4).unwrap();
    assert_eq!((table.is_registered(), table.slots()), (uring(&ctx), 4));
    let open = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .open(&ctx, &path);
    let mut file = ctx.block_on(open).unwrap();
    file.register(&table).unwrap();
    file.register(&table).unwrap(); // again: nothing
    assert_eq!(file.fixed_index().is_some(), uring(&ctx));
    assert_eq!(table.available(), if uring(&ctx) { 3 } else { 4 });
    let pool = FixedBufPool::new(&ctx, 1, 64).unwrap();
    ctx.block_on(async {
        let (res, _) = file.write_at(b"hello".to_vec(), 0).await;
        assert_eq!(res.unwrap(), 5);
        let (res, _) = file
            .writev_at(vec![b", ".to_vec(), b"table".to_vec()], 5)
            .await;
        assert_eq!(res.unwrap(), 7);
        let (w, f, _) = file.write_at_then_fsync(b"!".to_vec(), 12, true).await;
        assert_eq!(w.unwrap(), 1);
        f.unwrap();
        file.fsync().await.unwrap();
        file.fdatasync().await.unwrap();
        file.sync_file_range(0, 0, libc::SYNC_FILE_RANGE_WRITE)
            .await
            .unwrap();
        let (res, buf) = file.read_at(Vec::with_capacity(32), 0).await;
        assert_eq!(res.unwrap(), 13);
        assert_eq!(buf, b"hello, table!");
        let (res, bufs) = file
            .readv_at(vec![Vec::with_capacity(5), Vec::with_capacity(8)], 0)
            .await;
        assert_eq!(res.unwrap(), 13);
        assert_eq!(bufs[1], b", table!");
        let mut fixed = pool.try_get().unwrap();
        fixed.set_len(3);
        fixed.copy_from_slice(b"FIX");
        let (res, fixed) = file.write_fixed_at(fixed, 0).await;
        assert_eq!(res.unwrap(), 3);
        let (res, fixed) = file.read_fixed_at(fixed, 0).await;
        assert_eq!(&fixed[..res.unwrap()], b"FIXlo, table!");
        file.fallocate(FallocateMode::Allocate { keep_size: true }, 0, 4096)
            .await
            .unwrap();
        file.set_len(5).await.unwrap();
        assert_eq!(file.metadata().await.unwrap().len(), 5);
    });
    assert_eq!(std::fs::read(&path).unwrap(), b"FIXlo");
    drop(file);
    until_free(&ctx, &table, 4);
}

/// The kernel uses the entry, not the descriptor: with another file put on the
/// descriptor's number behind the `File`'s back, a registered file still reads its
/// own, and an unregistered one reads the other.
#[test]
fn the_kernel_uses_the_entry_not_the_descriptor() {
    let Some(ctx) = common::uring_ctx(
        "the_kernel_uses_the_entry_not_the_descriptor",
        AioContext::builder(),
    ) else {
        return;
    };
    let table = FixedFileTable::new(&ctx, 1).unwrap();
    let (mut file, w) = pipe_file(&ctx);
    file.register(&table).unwrap();
    let (other_r, other_w) = pipe();
    // SAFETY: the number stays open (now naming the other pipe's read end); the File
    // closes it at its drop as before.
    assert!(unsafe { libc::dup2(other_r.as_raw_fd(), file.as_raw_fd()) } >= 0);
    write_fd(w.as_raw_fd(), b"mine");
    write_fd(other_w.as_raw_fd(), b"other");
    let (res, buf) = ctx.block_on(file.read_at(Vec::with_capacity(8), 0));
    assert_eq!(
        &buf[..res.unwrap()],
        b"mine",
        "the entry names the original pipe"
    );
    file.unregister();
    let (res, buf) = ctx.block_on(file.read_at(Vec::with_capacity(8), 0));
    assert_eq!(
        &buf[..res.unwrap()],
        b"other",
        "unregistered: the descriptor"
    );
    until_free(&ctx, &table, 1);
}

#[test]
fn registration_errors_are_clear() {
    let ctx = new_ctx();
    for slots in [0, MAX_FIXED_FILES + 1] {
        let e = FixedFileTable::new(&ctx, slots).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("file table of"), "{e}");
    }
    let table = FixedFileTable::new(&ctx, 1).unwrap();
    match FixedFileTable::new(&ctx, 1) {
        Err(e) => {
            assert!(uring(&ctx));
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            assert!(e.to_string().contains("file table already"), "{e}");
        }
        Ok(t) => assert!(!uring(&ctx) && !t.is_registered()),
    }
    let (mut a, _wa) = pipe_file(&ctx);
    let (mut b, _wb) = pipe_file(&ctx);
    a.register(&table).unwrap();
    match b.register(&table) {
        Err(e) => {
            assert!(uring(&ctx));
            assert!(
                e.to_string()
                    .contains("all 1 entries of the file table are taken"),
                "{e}"
            );
            assert_eq!(b.fixed_index(), None);
        }
        Ok(()) => assert!(!uring(&ctx)),
    }
    // Another context's table, and a File whose context is gone.
    let other = new_ctx();
    let other_table = FixedFileTable::new(&other, 1).unwrap();
    match b.register(&other_table) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}"),
        Ok(()) => assert!(!uring(&ctx)),
    }
    if uring(&ctx) {
        let e = a.register(&other_table).unwrap_err();
        assert!(e.to_string().contains("registered in another table"), "{e}");
    }
    let (mut orphan, _wo) = pipe_file(&other);
    drop(other_table);
    drop(other);
    let e = orphan.register(&table).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    // An unregistered file's operations use the descriptor.
    a.unregister();
    assert_eq!(a.fixed_index(), None);
    let (res, _) = ctx.block_on(
        a.read_at(Vec::with_capacity(1), 0)
            .with_deadline(std::time::Duration::from_millis(5)),
    );
    assert_eq!(res.unwrap_err().kind(), io::ErrorKind::TimedOut);
}

/// The child's side of `a_table_beyond_rlimit_nofile_names_the_limit` (a process of its
/// own: the limit is process-wide).
const NOFILE_CHILD: &str = "AIOCTX_FIXED_FILES_NOFILE_CHILD";

#[test]
fn a_table_beyond_rlimit_nofile_names_the_limit() {
    if std::env::var_os(NOFILE_CHILD).is_some() {
        let lim = libc::rlimit {
            rlim_cur: 64,
            rlim_max: 64,
        };
        // SAFETY: a valid rlimit; this process is the child, alone with its limit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        let ctx = new_ctx();
        match FixedFileTable::new(&ctx, 128) {
            Ok(t) => println!("CHILD-OK registered={}", t.is_registered()),
            Err(e) => println!("CHILD-ERR {e}"),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_table_beyond_rlimit_nofile_names_the_limit",
            "--nocapture",
        ])
        .env(NOFILE_CHILD, "1")
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("CHILD-OK registered=false") {
        common::say_skipped(
            "skipped a_table_beyond_rlimit_nofile_names_the_limit: epoll has no file table to refuse",
        );
        return;
    }
    let line = text
        .lines()
        .find(|l| l.contains("CHILD-ERR"))
        .unwrap_or_else(|| panic!("no refusal from the child: {text}"));
    assert!(line.contains("exceed RLIMIT_NOFILE (64)"), "{line}");
}

/// Unregistered, or dropped, with a read in flight on its entry: the entry stays taken
/// until the read completed, and is then reused by another file, whose reads get its
/// own data.
#[test]
fn an_entry_is_freed_only_after_the_operations_on_it_completed() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let table = FixedFileTable::new(&ctx, 1).unwrap();
    // The entry a registered file takes (none on epoll).
    let taken = usize::from(uring(&ctx));
    let (mut a, wa) = pipe_file(&ctx);
    a.register(&table).unwrap();
    let mut read = a.read_at(Vec::with_capacity(8), 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    a.unregister();
    drop(a);
    for _ in 0..3 {
        ctx.poll(false);
    }
    assert_eq!(table.available(), 1 - taken, "freed under a read in flight");
    let (mut b, wb) = pipe_file(&ctx);
    assert_eq!(b.register(&table).is_err(), uring(&ctx));
    write_fd(wa.as_raw_fd(), b"for a");
    let (res, buf) = ctx.block_on(read);
    assert_eq!(&buf[..res.unwrap()], b"for a");
    until_free(&ctx, &table, 1);
    b.register(&table).unwrap();
    write_fd(wb.as_raw_fd(), b"for b");
    let (res, buf) = ctx.block_on(b.read_at(Vec::with_capacity(8), 0));
    assert_eq!(&buf[..res.unwrap()], b"for b");

    // A read dropped mid-flight (cancelled): freed after its final completion.
    let mut read = b.read_at(Vec::with_capacity(8), 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    b.unregister();
    drop(read);
    until_free(&ctx, &table, 1);
    write_fd(wb.as_raw_fd(), b"after");
    let (res, buf) = ctx.block_on(b.read_at(Vec::with_capacity(8), 0));
    assert_eq!(
        &buf[..res.unwrap()],
        b"after",
        "the dropped read took the data"
    );
}

#[test]
fn registered_inside_a_bh_and_a_task() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let table = FixedFileTable::new(&ctx, 2).unwrap();
    let (r, w) = pipe();
    let (c, t) = (ctx.clone(), table.clone());
    let read = started_in_bh(&ctx, move || {
        let mut file = File::from_owned_fd(&c, r);
        file.register(&t).expect("register inside a BH");
        Box::pin(async move { file.read_at(Vec::with_capacity(4), 0).await })
    });
    write_fd(w.as_raw_fd(), b"bh");
    let (res, buf) = ctx.block_on(read);
    assert_eq!(&buf[..res.unwrap()], b"bh");
    until_free(&ctx, &table, 2);

    let (r, w) = pipe();
    write_fd(w.as_raw_fd(), b"task");
    let (c, t) = (ctx.clone(), table.clone());
    let got = ctx.block_on(ctx.spawn(async move {
        let mut file = File::from_owned_fd(&c, r);
        file.register(&t).unwrap();
        let index = file.fixed_index();
        let (res, buf) = file.read_at(Vec::with_capacity(8), 0).await;
        (index, buf[..res.unwrap()].to_vec())
    }));
    let (index, data) = got.unwrap();
    assert_eq!(index.is_some(), uring(&ctx));
    assert_eq!(data, b"task");
    until_free(&ctx, &table, 2);
}

/// Reads of a registered file dropped at random points, 300 of them: each buffer freed
/// once, none leaked, no data taken by a dropped read, and every entry back at the end.
#[test]
fn dropped_reads_of_a_registered_file() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let live = Arc::new(AtomicUsize::new(0));
    let table = FixedFileTable::new(&ctx, 2).unwrap();
    let (mut file, w) = pipe_file(&ctx);
    let mut rng = common::Rng::new(0x7AB1E);
    for round in 0..300 {
        if round % 50 == 0 {
            file.unregister();
            file.register(&table).unwrap();
        }
        let mut read = file.read_at(Counted::new(8, &live), 0);
        match rng.below(4) {
            0 => {}
            1 => assert!(poll_once(&mut read).is_pending()),
            2 => {
                assert!(poll_once(&mut read).is_pending());
                ctx.poll(false);
            }
            _ => {
                write_fd(w.as_raw_fd(), b"x");
                assert_eq!(ctx.block_on(read).0.unwrap(), 1);
                continue;
            }
        }
        drop(read);
        write_fd(w.as_raw_fd(), b"y");
        let (res, buf) = ctx.block_on(file.read_at(Vec::with_capacity(4), 0));
        assert_eq!(
            (res.unwrap(), buf.as_slice()),
            (1, &b"y"[..]),
            "round {round}"
        );
    }
    drop(file);
    until_free(&ctx, &table, 2);
    drop(ctx);
    assert_eq!(live.load(Ordering::SeqCst), 0, "a buffer leaked");
}

/// A registered file dropped on another thread: its entry is emptied by a bottom half
/// on the home thread.
#[test]
fn a_registered_file_dropped_on_another_thread() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let table = FixedFileTable::new(&ctx, 1).unwrap();
    let (mut file, _w) = pipe_file(&ctx);
    file.register(&table).unwrap();
    std::thread::spawn(move || drop(file)).join().unwrap();
    until_free(&ctx, &table, 1);
    let (mut again, w) = pipe_file(&ctx);
    again.register(&table).unwrap();
    write_fd(w.as_raw_fd(), b"ok");
    let (res, buf) = ctx.block_on(again.read_at(Vec::with_capacity(4), 0));
    assert_eq!(&buf[..res.unwrap()], b"ok");
}

/// The context dropped under a pending read of a registered file: the read resolves
/// (`ECANCELED`), its buffer is freed, and the file and table outlive the context.
#[test]
fn a_context_dropped_under_a_registered_read() {
    let ctx = new_ctx();
    let live = Arc::new(AtomicUsize::new(0));
    let table = FixedFileTable::new(&ctx, 1).unwrap();
    let (mut file, _w) = pipe_file(&ctx);
    file.register(&table).unwrap();
    let mut read = file.read_at(Counted::new(8, &live), 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    let _watch = common::watchdog("context drop under a registered read", 30);
    let weak = Arc::downgrade(&ctx);
    drop(ctx);
    assert!(weak.upgrade().is_none(), "the context was not freed");
    match poll_once(&mut read) {
        Poll::Ready((res, _)) => {
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        }
        Poll::Pending => panic!("the read did not resolve with its context dropped"),
    }
    assert_eq!(live.load(Ordering::SeqCst), 0);
    drop(file);
    drop(table);
}
