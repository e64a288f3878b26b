//! Unit tests of the ring driver: which CQEs and cancels reach which operation.

use std::os::fd::AsRawFd;

use super::*;
use crate::backend::Ready;
use crate::backend::ops::INTERNAL_TAG;

/// A CQE whose `user_data` names no operation in flight — a free slot, a slot
/// reused under a new generation, the wrong tag — is dropped, and reaches nobody.
#[test]
fn stale_and_foreign_cqes_reach_no_operation() {
    let Ok(ring) = Ring::new(8) else {
        println!("skipped: io_uring is unavailable here");
        return;
    };
    let event = sys::eventfd().unwrap();
    let mut d = UringDriver::new(ring, event.as_raw_fd());
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    // SAFETY: a NOP names no memory.
    let nop = || unsafe { Sqe::new(opcode::Nop::new().build()) };
    d.push_raw(
        nop(),
        Callback::Raw(Box::new(move |_, _| {
            r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })),
    );
    let (live, _) = d
        .ops
        .user_data()
        .find(|(_, op)| matches!(op, Op::Raw(_)))
        .unwrap();
    let (notify, _) = d
        .ops
        .user_data()
        .find(|(_, op)| matches!(op, Op::NotifyRead))
        .unwrap();
    // Forged CQEs: the next generation of both slots, the raw op with the internal
    // tag, a slot never used.
    for forged in [
        live + (1 << 32),
        notify + (1 << 32),
        live | INTERNAL_TAG,
        12345,
    ] {
        d.ring.push(&nop(), forged);
    }
    while d.ops.live > 1 || d.has_ready() {
        d.ring.wait(Some(Duration::from_millis(10)));
        d.collect("test");
        while let Some(ready) = d.next_ready() {
            match ready {
                Ready::Raw(cb, res, flags) => cb.run(res, flags),
                _ => unreachable!(),
            }
        }
    }
    assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(
        d.ops.find(notify).is_some(),
        "the eventfd read is still armed"
    );
    let done = d.shutdown("test", Duration::from_secs(5));
    assert!(done.is_empty());
}

/// A dropped future's cancel reaches only the live user operation it names: not the
/// loop's own operations, not a stale `user_data`, and the cancelled operation's
/// slot stays until its final CQE.
#[test]
fn a_user_cancel_reaches_only_its_own_live_operation() {
    let Ok(ring) = Ring::new(8) else {
        println!("skipped: io_uring is unavailable here");
        return;
    };
    let event = sys::eventfd().unwrap();
    let mut d = UringDriver::new(ring, event.as_raw_fd());
    let (notify, _) = d
        .ops
        .user_data()
        .find(|(_, op)| matches!(op, Op::NotifyRead))
        .unwrap();
    let live = d.ops.live;
    d.cancel_user(notify);
    d.cancel_user(notify & !INTERNAL_TAG);
    d.cancel_user(notify + (1 << 32));
    assert_eq!(d.ops.live, live, "no cancel was issued");
    // A read of an empty pipe waits (poll-armed) until cancelled.
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 returned two new descriptors that we own.
    let (r, _w) = unsafe {
        use std::os::fd::{FromRawFd, OwnedFd};
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let mut buf = Box::new([0u8; 8]);
    let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 8).build();
    let res = Arc::new(std::sync::atomic::AtomicI32::new(1));
    let r2 = Arc::clone(&res);
    // SAFETY: the buffer moves into the completion callback, which the driver keeps
    // until the operation's final CQE; moving the `Box` does not move its bytes.
    let user_data = d.push_raw(
        unsafe { Sqe::new(entry) },
        Callback::Raw(Box::new(move |res, _| {
            drop(buf);
            r2.store(res, std::sync::atomic::Ordering::Relaxed);
        })),
    );
    d.ring.submit();
    d.cancel_user(user_data);
    for round in 0.. {
        if res.load(std::sync::atomic::Ordering::Relaxed) != 1 {
            break;
        }
        assert!(round < 3000, "the cancelled read never completed (hang)");
        assert!(d.ops.find(user_data).is_some(), "freed before its CQE");
        d.ring.wait(Some(Duration::from_millis(10)));
        d.collect("test");
        while let Some(ready) = d.next_ready() {
            match ready {
                Ready::Raw(cb, res, flags) => cb.run(res, flags),
                _ => unreachable!(),
            }
        }
    }
    assert_eq!(
        res.load(std::sync::atomic::Ordering::Relaxed),
        -libc::ECANCELED
    );
    d.cancel_user(user_data); // stale now: nothing happens
    let done = d.shutdown("test", Duration::from_secs(5));
    assert!(done.is_empty());
}
