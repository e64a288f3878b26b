//! Regressions of dropping an I/O future and of descriptor numbers reused under the
//! epoll stream table:
//! - dropping a pending read cancels it: data written after the drop reaches the next
//!   read (io_uring: the cancel is submitted by the drop itself on the home thread, or
//!   by the loop's next poll for a drop on another thread; epoll: the waiting operation
//!   is taken out of the stream table);
//! - a dropped read holds its descriptor no longer: the peer of a closed socket sees EOF;
//! - an operation is bound to the file its descriptor named when it was submitted: a
//!   read on a reused descriptor number reads the new file while an older operation
//!   still waits on the old one (as io_uring does).
#![cfg(not(loom))]

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread;
use std::time::Duration;

use common::{Rescue, Watchdog, new_ctx, pipe, poll_once, wait_until, write_fd};

/// How long a test waits for data before it writes a rescue and fails.
const GRACE: Duration = Duration::from_secs(5);

/// Reads once from `r` on `ctx` and checks that it got `want` without the rescue.
fn read_expect(ctx: &aioctx::aio::AioContext, r: RawFd, w: RawFd, want: &[u8], what: &str) {
    let rescue = Rescue::after(GRACE, move || write_fd(w, b"RESCUE"));
    let (res, buf) = ctx.block_on(ctx.read_at(r, vec![0u8; 16], 0));
    let fired = rescue.finish();
    let n = res.unwrap();
    assert!(
        !fired && &buf[..n] == want,
        "{what}: the read got {:?} (rescue needed: {fired}): data written after a read \
         future was dropped went to the dropped read",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// A read future dropped on the home thread while it waits, then data written at once
/// (no poll in between): the next read gets the data. On io_uring the drop submits the
/// cancel itself, and the kernel takes a poll-armed pipe read off inline.
#[test]
fn dropping_a_pending_read_cancels_it_before_later_data() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    for round in 0..20 {
        let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut read).is_pending());
        ctx.poll(false); // submitted, waiting for data
        drop(read);
        write_fd(w.as_raw_fd(), b"hello");
        read_expect(
            &ctx,
            r.as_raw_fd(),
            w.as_raw_fd(),
            b"hello",
            &format!("round {round}"),
        );
    }
}

/// The same with the future dropped on another thread: the cancel is handed to the loop,
/// which submits it at its next poll; data written after that poll reaches the next read.
#[test]
fn dropping_a_pending_read_on_another_thread_cancels_it() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    ctx.poll(false); // binds the home thread
    for round in 0..20 {
        let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(poll_once(&mut read).is_pending());
        ctx.poll(false);
        thread::spawn(move || drop(read)).join().unwrap();
        ctx.poll(false); // runs the cancel handed over by the drop
        write_fd(w.as_raw_fd(), b"hello");
        read_expect(
            &ctx,
            r.as_raw_fd(),
            w.as_raw_fd(),
            b"hello",
            &format!("round {round}"),
        );
    }
}

/// A read future on a socket dropped while it waits, then the socket closed: the peer
/// sees EOF (no operation, in the kernel or in the stream table, keeps the socket open).
#[test]
fn a_dropped_read_lets_a_closed_socket_reach_eof() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let mut sv = [0; 2];
    // SAFETY: `sv` is a valid array of two ints.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: socketpair returned two new descriptors that we own.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let mut read = ctx.read_at(a.as_raw_fd(), vec![0u8; 8], 0);
    assert!(poll_once(&mut read).is_pending());
    ctx.poll(false);
    drop(read);
    drop(a);
    wait_until("the peer of the closed socket to see EOF", || {
        ctx.poll(false);
        let mut buf = [0u8; 8];
        // SAFETY: non-blocking receive into a local buffer.
        let n = unsafe {
            libc::recv(
                b.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                8,
                libc::MSG_DONTWAIT,
            )
        };
        n == 0
    });
}

/// A read waits on pipe A at descriptor number N; the user closes N (a logic error the
/// operation survives: it keeps A open, as io_uring does) and pipe B gets N (`dup2`). A read on
/// N reads B, and the older read still completes with A's data.
#[test]
fn a_read_on_a_reused_descriptor_number_reads_the_new_file() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (ra, wa) = pipe();
    let num = ra.as_raw_fd();
    let mut old = ctx.read_at(num, vec![0u8; 16], 0);
    assert!(poll_once(&mut old).is_pending());
    ctx.poll(false);
    // The number is closed and reused in one step (dup2 closes A's descriptor at
    // `num` and installs B's there), so that no other test thread can take the number
    // in between; `ra` owns `num`, now B's, from here on.
    let (rb, wb) = pipe();
    // SAFETY: `num` is ours (`ra`); dup2 replaces the file it names with rb's.
    assert_eq!(unsafe { libc::dup2(rb.as_raw_fd(), num) }, num);
    write_fd(wb.as_raw_fd(), b"new");
    read_expect(
        &ctx,
        num,
        wb.as_raw_fd(),
        b"new",
        "read on the reused number",
    );
    write_fd(wa.as_raw_fd(), b"old");
    let (res, buf) = ctx.block_on(old);
    let n = res.unwrap();
    assert_eq!(
        &buf[..n],
        b"old",
        "the older read reads the file it was submitted on"
    );
}

/// A write future dropped while it waits for room in a full pipe is cancelled too: once
/// the reader drains the pipe, the dropped write's bytes never appear.
#[test]
fn dropping_a_pending_write_cancels_it() {
    let ctx = new_ctx();
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, w) = pipe();
    // SAFETY: fcntl on descriptors we own.
    let size = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ failed");
    let fill = vec![b'x'; size as usize];
    write_fd(w.as_raw_fd(), &fill);
    let mut write = ctx.write_at(w.as_raw_fd(), b"DROPPED".to_vec(), 0);
    assert!(poll_once(&mut write).is_pending());
    ctx.poll(false);
    drop(write);
    // SAFETY: fcntl on a descriptor we own.
    let rc = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    assert_eq!(rc, 0);
    let mut buf = vec![0u8; size as usize + 64];
    let mut total = 0usize;
    for _ in 0..50 {
        ctx.poll(false);
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            total += n as usize;
        }
    }
    assert_eq!(
        total,
        size as usize,
        "the pipe carried {} bytes past the fill: the dropped write ran",
        total - size as usize
    );
}
