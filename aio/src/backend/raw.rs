//! Raw io_uring entries from users (QEMU: `aio_add_sqe`): what the loop can track.
//!
//! Rules:
//! [RW1] The loop can only keep the promise "a CQE reaches the operation that submitted it,
//!    and what an operation owns is freed only after its last CQE" for entries whose
//!    last CQE it can recognise (the one without `IORING_CQE_F_MORE`), that do not hand
//!    the kernel memory beyond that CQE, and that cannot act on the loop's own
//!    operations by `user_data`. [`check`] refuses every other entry at submit with an
//!    `InvalidInput` error that names the reason, and says which entries are multishot.
//! [RW2] Refused outright: `IOSQE_IO_LINK`/`IO_HARDLINK` (the loop pushes its own entries
//!    between the user's, so a chain would swallow them; safe chains are the loop's
//!    own, `io/link.rs`), `IOSQE_IO_DRAIN` (the drain
//!    waits for the loop's always-armed eventfd read too, and holds back every entry
//!    after it, the read's re-arm included: wake-ups would be lost), `IOSQE_CQE_SKIP_SUCCESS` (no
//!    CQE: the operation would never leave the table), `IOSQE_BUFFER_SELECT`, unknown
//!    SQE flags (so also the multishot `RECV`/`RECVMSG`/`READ_MULTISHOT`, which the
//!    kernel runs only with provided buffers); `SEND_ZC`/`SENDMSG_ZC` (a
//!    second, notification CQE); `PROVIDE_BUFFERS` (memory owned by the kernel after
//!    the CQE); `MSG_RING` (posts a CQE with a `user_data` of its choice); `URING_CMD`,
//!    `LINK_TIMEOUT` and opcodes this crate does not know; `POLL_REMOVE` with update
//!    flags; a cancel or removal (`ASYNC_CANCEL`, `POLL_REMOVE`, `TIMEOUT_REMOVE`) whose
//!    target `user_data` lies in the loop's reserved tag space.
//! [RW3] A cancel that reaches the loop's own operations by another route (any, by fd) is
//!    harmless: an internal operation that completes with `ECANCELED` while the context
//!    lives is armed again (`uring.rs`).
//! [RW4] `Sqe` (`op/sqe.rs`) is the only way an entry reaches the ring. Building one is
//!    `unsafe`: the builder promises that what the entry names outlives the operation.
//!    For users that promise is `submit_raw`'s `# Safety` (`submit.rs`); for typed
//!    operations it is `OpCode::sqe`'s contract (`op/mod.rs`); the rest of the loop
//!    passes `Sqe`s around with safe calls.
//! [RW5] Multishot forms (`POLL_ADD` with `IORING_POLL_ADD_MULTI`, `ACCEPT` with
//!    `ACCEPT_MULTISHOT`, `RECV`/`RECVMSG` with `RECV_MULTISHOT`, `TIMEOUT` with
//!    `TIMEOUT_MULTISHOT`, `READ_MULTISHOT`) post a CQE with `IORING_CQE_F_MORE` per event
//!    and a last one without it. They are accepted only with a kept handler
//!    (`submit_raw_handler`), which can run once per CQE; a one-shot `FnOnce` callback
//!    (`submit_raw`) cannot, so `submit_raw` refuses them. The slot and what it owns
//!    stay until the last CQE ([UR12] (`uring.rs`)); a cancel (`cancel_raw`, or the
//!    context's drop) makes the kernel post that last CQE.

use std::io;

use io_uring::squeue;

use super::ops::INTERNAL_TAG;

// Kernel ABI: `struct io_uring_sqe` (include/uapi/linux/io_uring.h).
const OFF_FLAGS: usize = 1;
const OFF_IOPRIO: usize = 2;
const OFF_ADDR: usize = 16;
const OFF_LEN: usize = 24;
const OFF_OP_FLAGS: usize = 28;
static_assertions::assert_eq_size!(squeue::Entry, [u8; 64]);

/// The fields [`check`] reads.
struct View {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    addr: u64,
    len: u32,
    op_flags: u32,
}

fn view(e: &squeue::Entry) -> View {
    let p = (e as *const squeue::Entry).cast::<u8>();
    // The entry is the kernel's 64-byte `io_uring_sqe` (size asserted above), built by
    // the io_uring crate from a zeroed SQE, so all 64 bytes are initialized.
    // SAFETY: `squeue::Entry` is `repr(C)` around that SQE; the offsets are the kernel
    // ABI, and the reads are unaligned and stay inside the entry.
    unsafe {
        View {
            opcode: p.read(),
            flags: p.add(OFF_FLAGS).read(),
            ioprio: p.add(OFF_IOPRIO).cast::<u16>().read_unaligned(),
            addr: p.add(OFF_ADDR).cast::<u64>().read_unaligned(),
            len: p.add(OFF_LEN).cast::<u32>().read_unaligned(),
            op_flags: p.add(OFF_OP_FLAGS).cast::<u32>().read_unaligned(),
        }
    }
}

// SQE flags (IOSQE_*).
const FIXED_FILE: u8 = 1 << 0;
const IO_DRAIN: u8 = 1 << 1;
const IO_LINK: u8 = 1 << 2;
const IO_HARDLINK: u8 = 1 << 3;
const ASYNC: u8 = 1 << 4;
const BUFFER_SELECT: u8 = 1 << 5;
const CQE_SKIP_SUCCESS: u8 = 1 << 6;

// Opcodes (enum io_uring_op).
const POLL_ADD: u8 = 6;
const POLL_REMOVE: u8 = 7;
const RECVMSG: u8 = 10;
const TIMEOUT: u8 = 11;
const TIMEOUT_REMOVE: u8 = 12;
const ACCEPT: u8 = 13;
const ASYNC_CANCEL: u8 = 14;
const LINK_TIMEOUT: u8 = 15;
const RECV: u8 = 27;
const PROVIDE_BUFFERS: u8 = 31;
const REMOVE_BUFFERS: u8 = 32;
const MSG_RING: u8 = 40;
const URING_CMD: u8 = 46;
const SEND_ZC: u8 = 47;
const SENDMSG_ZC: u8 = 48;
const READ_MULTISHOT: u8 = 49;

/// Opcodes that post exactly one CQE and hold no memory past it, whatever their
/// flags: NOP..FSYNC, READ/WRITE_FIXED, SYNC_FILE_RANGE, SENDMSG, CONNECT..SPLICE but
/// RECV, TEE..LINKAT, the xattr ops, SOCKET, WAITID, the futex ops, FTRUNCATE, BIND,
/// LISTEN.
fn single_shot(op: u8) -> bool {
    matches!(op, 0..=5 | 8 | 9 | 16..=26 | 28..=30 | 33..=39 | 41..=45 | 50..=53 | 55..=57)
}

fn refuse(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "submit_raw: {what}; the loop tracks only entries whose last CQE it can \
             recognise, that hold no memory past it and never act on the loop's own \
             operations"
        ),
    )
}

/// How many CQEs an accepted entry posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shots {
    /// Exactly one.
    One,
    /// One per event while `IORING_CQE_F_MORE` is set, then a last one ([RW5]).
    Many,
}

/// Refuses an entry the loop cannot track ([RW1] and [RW2]); says whether an accepted
/// one is multishot ([RW5]).
pub(crate) fn check(e: &squeue::Entry) -> io::Result<Shots> {
    let v = view(e);
    let bad_flags = v.flags & !(FIXED_FILE | ASYNC);
    if bad_flags != 0 {
        let name = if bad_flags & CQE_SKIP_SUCCESS != 0 {
            "IOSQE_CQE_SKIP_SUCCESS (no CQE on success: the operation would never complete)"
        } else if bad_flags & (IO_LINK | IO_HARDLINK) != 0 {
            "IOSQE_IO_LINK/IO_HARDLINK (the loop queues its own entries between yours)"
        } else if bad_flags & IO_DRAIN != 0 {
            "IOSQE_IO_DRAIN (a drained entry waits for every entry before it, among them the \
             loop's own eventfd read, which stays armed until the next wake-up; it and every \
             entry after it would stall, cross-thread wake-ups included)"
        } else if bad_flags & BUFFER_SELECT != 0 {
            "IOSQE_BUFFER_SELECT (provided buffers are not supported)"
        } else {
            "an unknown SQE flag"
        };
        return Err(refuse(format_args!(
            "SQE flags {:#x} include {name}",
            v.flags
        )));
    }
    let targets_internal = v.addr & INTERNAL_TAG != 0;
    use Shots::{Many, One};
    match v.opcode {
        op if single_shot(op) => Ok(One),
        POLL_ADD if v.len & 1 != 0 => Ok(Many), // IORING_POLL_ADD_MULTI
        POLL_ADD => Ok(One),
        RECV | RECVMSG if v.ioprio & (1 << 1) != 0 => Ok(Many), // RECV_MULTISHOT
        RECV | RECVMSG => Ok(One),
        ACCEPT if v.ioprio & 1 != 0 => Ok(Many), // ACCEPT_MULTISHOT
        ACCEPT => Ok(One),
        TIMEOUT if v.op_flags & (1 << 6) != 0 => Ok(Many), // TIMEOUT_MULTISHOT
        TIMEOUT => Ok(One),
        READ_MULTISHOT => Ok(Many),
        POLL_REMOVE if v.len != 0 => Err(refuse(
            "POLL_REMOVE with update flags (it may change a poll's user_data or make it multishot)",
        )),
        POLL_REMOVE | TIMEOUT_REMOVE | ASYNC_CANCEL if targets_internal => {
            Err(refuse(format_args!(
                "opcode {} targets user_data {:#x}, in the loop's reserved tag space",
                v.opcode, v.addr
            )))
        }
        POLL_REMOVE | TIMEOUT_REMOVE | ASYNC_CANCEL => Ok(One),
        SEND_ZC | SENDMSG_ZC => Err(refuse("SEND_ZC/SENDMSG_ZC post a second, notification CQE")),
        PROVIDE_BUFFERS | REMOVE_BUFFERS => Err(refuse(
            "provided buffers are owned by the kernel past the CQE",
        )),
        MSG_RING => Err(refuse(
            "MSG_RING posts a CQE with a user_data of its choice",
        )),
        LINK_TIMEOUT => Err(refuse("LINK_TIMEOUT needs a linked chain")),
        URING_CMD => Err(refuse("URING_CMD's CQEs are defined by the driver")),
        op => Err(refuse(format_args!(
            "opcode {op} is not known to this crate"
        ))),
    }
}
