//! The protocol notes a user of aioctx relies on (documentation only; this module has
//! no items).
//!
//! Each protocol module of the crate opens with its rules, labelled (`[BH7]`, `[IO6]`,
//! …), and proves them there; those modules are private, so this page gathers what a
//! user can count on, each point with the label of the rule that guarantees it and the
//! source file where the rule and its proof live (paths are relative to the crate's
//! `src/`; the repository's `ARCHITECTURE.md` maps the whole design). A label never
//! changes meaning: a rule that goes away leaves its label unused.
//!
//! # What runs where
//!
//! - A context has one *home* thread: the first thread that calls
//!   [`poll`](crate::AioContext::poll), [`block_on`](crate::AioContext::block_on) or
//!   [`make_current`](crate::AioContext::make_current) on it binds it for good (`[N6]`,
//!   `notify.rs`). An [`IoThread`](crate::IoThread)'s context belongs to its thread;
//!   [`main_context`](crate::main_context) belongs to the first thread that polls it
//!   (see [`testing`](crate::testing) for what that means under libtest).
//! - Every callback — bottom half, timer, fd handler, completion of a raw operation —
//!   and every task runs on the home thread, inside a `poll` (or `block_on`).
//!   Scheduling, arming and registering work from any thread; running does not.
//! - A notify costs no syscall while the loop is awake, and at most one eventfd write
//!   per sleep however many producers notify (`[N1]`–`[N4]`, `notify.rs`); a notify
//!   from the home thread itself touches nothing shared (`[N5]`).
//!
//! # Bottom halves ([`Bh`](crate::Bh); `bh.rs`)
//!
//! - Scheduling is wait-free from any thread and idempotent while pending; a BH is on
//!   the pending list at most once (`[BH1]`).
//! - Order: BHs run FIFO by the moment each became pending. One `poll` runs the *slice*
//!   it took at its start; a BH scheduled while the slice runs — also by itself — runs
//!   at the next `poll`, so a self-rescheduling BH runs once per poll and cannot starve
//!   the loop (`[BH2]`).
//! - [`cancel`](crate::Bh::cancel) unschedules without losing the BH's place
//!   (`[BH4]`); dropping the handle kills the callback, also from inside it (`[BH6]`).
//! - A nested `poll` inside a BH runs its parents' slices first, so a BH that waits for
//!   another BH of the same slice does not deadlock (`[BH5]`).
//! - A callback never runs re-entrantly: a BH scheduled again while its callback runs,
//!   and reached by a nested `poll` inside it, is deferred to the first `poll` after
//!   the callback returned — no schedule is lost (`[BH7]`), also when the callback
//!   panics (`[BH9]`).
//! - After the context's drop a schedule is refused
//!   ([`try_schedule`](crate::Bh::try_schedule) says
//!   [`ContextGone`](crate::ContextGone)) and every callback is freed, also one that
//!   owns its own `Bh` (`[BH8]`).
//!
//! # Timers ([`Timer`](crate::Timer); `timer.rs`)
//!
//! - Any thread may modify or delete a timer; a change that makes it the earliest
//!   wakes a sleeping loop (`[T1]`), whose sleep ends at the earliest deadline (`[T4]`).
//! - A `delete` or `modify` that comes before the callback started keeps it from
//!   running; one that comes after finds it running and does not wait for it, as
//!   QEMU's `timer_del` (`[T2]`).
//! - One `poll` runs each timer at most once: a timer re-armed into the past during a
//!   pass runs at the next `poll` (`[T3]`).
//! - Not re-entrant: a timer re-armed from its own callback and due in a nested `poll`
//!   inside it waits for the callback to return (`[T6]`).
//! - After the context's drop a modify is refused
//!   ([`try_modify`](crate::Timer::try_modify)) and every callback is freed (`[T5]`).
//!
//! # fd handlers ([`set_fd_handler`](crate::AioContext::set_fd_handler); `fd.rs`)
//!
//! - Any thread may add, replace or remove a handler; a removed handler's callbacks
//!   never run again once the call returns (`[FD1]`). The home thread applies the
//!   change at the start of its next `poll` (`[FD2]`).
//! - Level-triggered: a descriptor that stays readable keeps firing, one run per
//!   readiness report (`[FD3]`), on both back ends (`[EP1]`, `backend/epoll.rs`).
//! - A descriptor closed while registered (`EBADF`) has its handler removed with a log
//!   line; the loop never spins on it (`[FD5]`).
//!
//! # A panicking callback (`poll.rs`)
//!
//! A callback's panic unwinds out of `poll` to its caller and the context stays usable:
//! no borrow is held while user code runs (`[PO1]`), the work behind it stays queued
//! for the next `poll` (`[PO2]`), the callback is put back and can run again (`[PO3]`,
//! `[CC4]` in `callback.rs`), and tasks left by an unwinding drain still run (`[PO4]`).
//!
//! # Tasks ([`spawn`](crate::AioContext::spawn); `task.rs`, `run_queue.rs`)
//!
//! - A task is on at most one run queue and polled by one thread at a time; a wake
//!   during its poll is never lost (`[TK1]`–`[TK3]`). After
//!   [`reschedule_to`](crate::reschedule_to) it runs on the new context only once its
//!   poll on the old one returned (`[TK4]`).
//! - A task spawned on a context that is shut down is cancelled; a cancel drops the
//!   future exactly once, never while it is polled (`[TK5]`, `[TK6]`), and the
//!   [`JoinHandle`](crate::JoinHandle) yields a cancelled
//!   [`JoinError`](crate::JoinError) (`[TK7]`).
//! - One drain runs at most [`DRAIN_BUDGET`](crate::DRAIN_BUDGET) tasks, then yields
//!   to the loop (`[RQ3]`). A `poll` nested in a task (a `block_on`, `poll` or
//!   `wait_while` inside it) runs the queued tasks itself, so the tasks it waits for
//!   are not stuck behind it (`[RQ2]`).
//!
//! # Owned-buffer I/O ([`RingOp`](crate::RingOp); `io.rs`)
//!
//! - An operation owns its buffer (and every byte the kernel touches) until its final
//!   completion and gives it back with the result, `(io::Result<usize>, buf)`; the
//!   kernel never writes into freed memory, whatever happens to the future (`[IO1]`,
//!   `[IO2]`).
//! - **Dropping a future cancels its operation** (`[IO6]`). The buffer is freed only at
//!   the final completion. On io_uring a drop on the home thread cancels at once; a
//!   drop elsewhere hands the cancel to the loop, and until then the operation may
//!   complete. On epoll a stream operation is taken out unrun (`[ST4]`,
//!   `io/stream.rs`), a pool job not started is not run.
//! - **Dropping a read that already completed loses its data** (`io.rs`, after
//!   `[IO7]`): a `select!` or timeout that drops a finished read discards bytes the
//!   descriptor will not return again. Keep the future and poll it instead. A dropped
//!   write may have written or not.
//! - Every operation reports its real result, also when its context is dropped first
//!   (`ECANCELED` only when the cancel won) (`[IO3]`, `[SD3]` in `shutdown.rs`).
//!   `EINTR`/`EAGAIN` are retried, except for a `close` and a step of a chain
//!   (`[IO4]`).
//! - A deadline ([`with_deadline`](crate::RingOp::with_deadline)) cancels as a drop
//!   does and resolves to `TimedOut` (`[IO7]`); what cannot be interrupted is listed
//!   in `io/deadline.rs` (`[DL3]`). Linked steps each keep their own result (`[LK2]`,
//!   `io/link.rs`).
//! - Raw-fd methods take a plain `RawFd`: keep it open until the operation completed.
//!
//! # Files ([`File`](crate::File); `fs/file.rs`)
//!
//! - A `File` holds only a `Weak` of its context: it never keeps it alive, and its
//!   operations fail with `BrokenPipe` once it is gone (`[FL1]`).
//! - Every operation holds a share of the descriptor until its final completion, so
//!   the descriptor is closed exactly once, never while the kernel may use its number
//!   (`[FL2]`).
//! - Dropping the last share closes it — through the ring on the home thread, with
//!   `close(2)` otherwise; [`close`](crate::File::close) is the form that reports
//!   `close`'s error (`[FL3]`).
//! - `O_DIRECT` alignment is checked before anything reaches the kernel, with an
//!   `InvalidInput` naming what is misaligned (`[FL4]`; the buffer:
//!   [`AlignedBuf`](crate::AlignedBuf), `[A1]`–`[A3]` in `aligned.rs`).
//! - A `File`'s operations are [`FileOp`](crate::FileOp)s: the same deadline and cancel
//!   handle as a `RingOp`; one refused before the kernel (misaligned, context gone)
//!   resolves at its first poll with the error and the buffer (`[FO1]`, `[FO2]` in
//!   `fs/file_op.rs`).
//! - A [registered](crate::File::register) file's operations name its
//!   [`FixedFileTable`](crate::FixedFileTable) entry; the entry is emptied and reused
//!   only after every operation issued on it completed, and on the home thread
//!   (`[RF2]`, `[RF3]` in `fs/registered.rs`). A [`FixedBufPool`](crate::FixedBufPool)'s
//!   buffers are page-aligned, so they serve `O_DIRECT` (`[FX5]` in `io/fixed.rs`).
//!
//! # Shutdown and the context's drop (`shutdown.rs`)
//!
//! In order: unfinished tasks are cancelled, their futures dropped while the context is
//! still open (`[SD0]`); the BH list, timer lists, fd handlers and raw hand-over queue
//! are closed, so a racing schedule or modify either landed before or is refused
//! (`[SD1]`); every callback is freed, also one that owns its handle or the context
//! (`[SD2]`); operations in flight are cancelled and reaped, their callbacks run with
//! their real results (`[SD3]`). Callbacks' drops may call into the context (`[SD4]`),
//! and shutting down twice (an `IoThread` stopping, then the drop) is harmless
//! (`[SD5]`).
//!
//! # What is refused at run time
//!
//! Misuse of a protocol panics with a message naming what was wrong:
//!
//! - `poll`, `block_on` or `make_current` from a thread that is not the context's home
//!   (the message names both threads);
//! - [`current`](crate::current) on a thread with no current context, and
//!   `make_current` inside a [`with_current`](crate::with_current) closure or inside a
//!   spawned task;
//! - a [`ContextLocal`](crate::ContextLocal) whose init reads its own slot;
//! - [`reschedule_to`](crate::reschedule_to) awaited outside a task;
//! - polling a `RingOp`, a linked chain or a `JoinHandle` again after it completed, and
//!   `with_deadline` on an operation already submitted.
//!
//! Bad input is an `io::Error` instead (`InvalidInput`, naming the problem), and raw
//! entries the loop cannot track (users' links, …) are refused (`[RW1]`, `[RW2]`,
//! `backend/raw.rs`). Ring setup flags a caller asked for are required, never dropped
//! silently (`[S1]`, `backend/uring/setup.rs`).
//!
//! # Fence modes
//!
//! `aioctx_wait`'s kick and `aioctx_graph`'s read lock pair a fence on their hot side
//! with one on the rare side (`[K1]`/`[W1]`, `[R1]`/`[W1]`, `[U1]`). Where the kernel
//! grants `membarrier`, the hot side is a compiler fence and the rare side pays a
//! `membarrier` call; `aioctx_wait::FenceMode`, `set_fence_mode` and the
//! `AIOCTX_FENCES` environment variable choose, and the proof is in the docs of
//! `aioctx_wait` (`fence.rs`, `protocol.rs` `[AW1]`–`[AW5]`) and `aioctx_graph`
//! (`state.rs`, `[GL1]`–`[GL6]`).
