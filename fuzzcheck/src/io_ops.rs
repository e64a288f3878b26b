//! Owned-buffer I/O operations submitted, polled, cancelled, dropped and timed out in
//! any interleaving on one context, against a reference model (`io.rs`'s \[IO2\],
//! \[IO3\], \[IO6\]–\[IO8\], `io/deadline.rs`, `io/cancel_handle.rs`, `timeout.rs`).
//!
//! A run owns one context (io_uring — plain, `DEFER_TASKRUN`, `COOP_TASKRUN` or
//! `SINGLE_ISSUER` only — or epoll, chosen by the input's first byte; see [`Ring`]), two
//! pipes it reads from (data arrives only when the run feeds it), a sink pipe it writes
//! to (drained after every step) and a temp file. Each operation — a read on a pipe, a
//! write to the sink, a read or write of the file, or a zero-length read (a no-op) — is
//! held by the run and polled by it, or spawned as a task; it may get a per-operation
//! deadline (`RingOp::with_deadline`) or, in a task, a `timeout`, each of zero or of
//! an hour, so no clock decides an outcome. The run cancels operations through their
//! `CancelHandle`, drops held futures (and task handles) mid-flight, feeds the pipes,
//! polls the context — blocking only when the model says the operation waited for must
//! resolve — and drops the whole context with operations in flight.
//!
//! The model predicts each outcome as a set: a read on a pipe that never got data for
//! it does not complete, a cancelled one resolves with `ECANCELED`, a zero deadline
//! with `TimedOut`, a zero `timeout` with `Elapsed`; an operation the kernel may finish
//! before the cancel (a file operation, a pipe write, a read whose pipe had data) may
//! resolve either way, and a read returns the pipe's first bytes up to a write's end.
//! Data fed to a pipe after its read was cancelled or dropped on the home thread must
//! stay in the pipe (\[IO6\]). Every buffer is a `Tracked` (`io_ops/arena.rs`), counted
//! alive until freed: none may be freed while its future is held and unresolved, a
//! dropped read's buffer says what the read consumed, none may be written after its
//! drop (a canary), and none is left when the context is gone. The sink must hold
//! exactly the writes that ran, each once; the file's bytes must be ones a write may
//! have put there.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use aioctx_aio::{AioContext, Backend, CancelHandle, Elapsed, JoinHandle, RingOp, timeout};
use aioctx_testkit::{TempFile, pipe, poll_once, tempfile, write_fd};
use arbitrary::Arbitrary;

mod arena;
mod model;

use arena::{Arena, CANARY, Tracked};
use model::{FILE_LEN, INIT, Kind as MKind, MAX_PIPE_DATA, Model, Outcome, fill};

/// How many futures a run holds at once.
pub const SLOTS: usize = 6;
/// How many pipes the run reads from.
pub const PIPES: usize = 2;
/// "Never" for deadlines and timeouts: longer than any run.
const NEVER: Duration = Duration::from_secs(3600);

/// An operation to submit. Lengths and offsets are brought into range.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Kind {
    /// `read_at` on pipe `pipe % PIPES` (skipped while that pipe has a read in flight).
    PipeRead {
        /// Which pipe.
        pipe: u8,
        /// `1 + len % 32` bytes.
        len: u8,
    },
    /// `write_at` of `1 + len % 64` bytes to the sink pipe.
    PipeWrite {
        /// The length.
        len: u8,
    },
    /// `read_at` of the file at `off * 8 % 512`, `1 + len % 64` bytes.
    FileRead {
        /// The offset.
        off: u8,
        /// The length.
        len: u8,
    },
    /// `write_at` of the file at `off * 8 % 512`, up to `1 + len % 64` bytes.
    FileWrite {
        /// The offset.
        off: u8,
        /// The length.
        len: u8,
    },
    /// A zero-length `read_at` of the file.
    Nop,
}

/// A limit on an operation. The `timeout`s apply to tasks only (a held future has no
/// current context to arm them on); for a held future they mean no limit.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// None.
    None,
    /// `with_deadline(0)`.
    DeadlineZero,
    /// `with_deadline(1 h)`.
    DeadlineNever,
    /// `timeout(0, op)` in the task.
    TimeoutZero,
    /// `timeout(1 h, op)` in the task.
    TimeoutNever,
}

/// A step of a run. `u8` slots are taken modulo [`SLOTS`]; an empty slot, or a submit
/// the model refuses (no free slot, the pipe has a read in flight, the context was
/// dropped), makes the step a no-op.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Op {
    /// Creates the operation's future and holds it in the first free slot (unpolled).
    Submit(Kind, Limit),
    /// Spawns a task that awaits the operation; its `JoinHandle` takes the slot.
    Spawn(Kind, Limit),
    /// Polls the slot's future (or task handle) once.
    Poll(u8),
    /// Polls the slot until it resolves, blocking in the context's `poll`, if the model
    /// says it must resolve; otherwise one non-blocking context poll and one poll.
    Wait(u8),
    /// Drops the slot's future mid-flight (a task handle: detaches the task).
    Drop(u8),
    /// `CancelHandle::cancel` of the slot's operation.
    Cancel(u8),
    /// The same cancel, called on a second thread: handed to the loop, so data fed
    /// before the loop's next poll may still reach the operation.
    RemoteCancel(u8),
    /// Drops the slot's held future on a second thread (the cancel is handed to the
    /// loop, as for `RemoteCancel`); a task handle is dropped there too (detached).
    RemoteDrop(u8),
    /// Writes `1 + len % 16` bytes to pipe `pipe % PIPES`.
    Feed {
        /// Which pipe.
        pipe: u8,
        /// The length.
        len: u8,
    },
    /// `poll(false)` on the context.
    PollCtx,
    /// `shutdown_tasks`, then drops the run's reference to the context.
    DropContext,
}

/// How a run's ring is set up (io_uring only; epoll ignores it). A setup the kernel
/// refuses falls back to the plain ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ring {
    /// The default flags.
    #[default]
    Plain,
    /// `defer_taskrun(true)` (completions posted only when the home thread enters the
    /// kernel).
    DeferTaskrun,
    /// `coop_taskrun(true)`.
    CoopTaskrun,
    /// `single_issuer(true)` alone.
    SingleIssuer,
}

impl Ring {
    /// The setup bits 1 and 2 of an input's first byte name.
    pub fn from_byte(b: u8) -> Self {
        match (b >> 1) % 4 {
            0 => Ring::Plain,
            1 => Ring::DeferTaskrun,
            2 => Ring::CoopTaskrun,
            _ => Ring::SingleIssuer,
        }
    }

    fn apply(self, b: aioctx_aio::AioContextBuilder) -> aioctx_aio::AioContextBuilder {
        match self {
            Ring::Plain => b,
            Ring::DeferTaskrun => b.defer_taskrun(true),
            Ring::CoopTaskrun => b.coop_taskrun(true),
            Ring::SingleIssuer => b.single_issuer(true),
        }
    }
}

/// The result of a task.
type TaskOut = Result<(std::io::Result<usize>, Tracked), Elapsed>;

enum Fut {
    Held(RingOp<Tracked>),
    Task(JoinHandle<TaskOut>),
}

struct Slot {
    op: usize,
    fut: Fut,
    cancel: CancelHandle,
}

/// The real side of a run.
struct Real {
    ctx: Option<Arc<AioContext>>,
    weak: Weak<AioContext>,
    arena: Arc<Arena>,
    /// Read end, write end (non-blocking).
    pipes: Vec<(OwnedFd, OwnedFd)>,
    /// Read end (non-blocking), write end.
    sink: (OwnedFd, OwnedFd),
    file: TempFile,
    slots: [Option<Slot>; SLOTS],
    feeds: u8,
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on a descriptor this run owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    let res = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    assert_eq!(
        res,
        0,
        "fcntl O_NONBLOCK: {}",
        std::io::Error::last_os_error()
    );
}

fn outcome(res: std::io::Result<usize>, buf: &Tracked) -> Outcome {
    match res {
        Ok(n) => Outcome::Ok(n, buf.data().to_vec()),
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Outcome::Cancelled(buf.data().len()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut(buf.data().len()),
        Err(e) => Outcome::Other(e.to_string()),
    }
}

impl Real {
    fn new(backend: Backend, ring: Ring) -> Self {
        let builder = AioContext::builder().name("fuzz-io").backend(backend);
        let ctx = match ring.apply(builder).build() {
            Ok(ctx) => ctx,
            // This kernel refuses the setup: the plain ring.
            Err(_) if ring != Ring::Plain => return Self::new(backend, Ring::Plain),
            // No io_uring here: the run goes to epoll.
            Err(e)
                if backend == Backend::IoUring
                    && (e.kind() == std::io::ErrorKind::PermissionDenied
                        || e.raw_os_error() == Some(libc::ENOSYS)) =>
            {
                return Self::new(Backend::Epoll, Ring::Plain);
            }
            Err(e) => panic!("io_ops: cannot create an AioContext ({backend:?}): {e}"),
        };
        let pipes = (0..PIPES)
            .map(|_| {
                let (r, w) = pipe();
                set_nonblocking(&w);
                (r, w)
            })
            .collect();
        let sink = pipe();
        set_nonblocking(&sink.0);
        let file = tempfile("fuzz-io");
        std::os::unix::fs::FileExt::write_all_at(&file.file, &[INIT; FILE_LEN], 0)
            .expect("fill the file");
        Self {
            weak: Arc::downgrade(&ctx),
            ctx: Some(ctx),
            arena: Arc::default(),
            pipes,
            sink,
            file,
            slots: Default::default(),
            feeds: 0,
        }
    }

    fn op(&self, ctx: &AioContext, i: usize, kind: MKind, limit: Limit) -> RingOp<Tracked> {
        let buf = self
            .arena
            .buf(i, kind.buf_len(), kind.writes().then(|| fill(i)));
        let file = self.file.file.as_raw_fd();
        let op = match kind {
            MKind::PipeRead { pipe, .. } => ctx.read_at(self.pipes[pipe].0.as_raw_fd(), buf, 0),
            MKind::PipeWrite { .. } => ctx.write_at(self.sink.1.as_raw_fd(), buf, 0),
            MKind::FileRead { off, .. } => ctx.read_at(file, buf, off as u64),
            MKind::FileWrite { off, .. } => ctx.write_at(file, buf, off as u64),
            MKind::Nop => ctx.read_at(file, buf, 0),
        };
        match limit {
            Limit::DeadlineZero => op.with_deadline(Duration::ZERO),
            Limit::DeadlineNever => op.with_deadline(NEVER),
            _ => op,
        }
    }

    fn submit(&mut self, model: &mut Model, kind: MKind, limit: Limit, task: bool) {
        let Some(ctx) = self.ctx.clone() else { return };
        if !model.can_submit(kind) {
            return;
        }
        let limit = match limit {
            Limit::TimeoutZero | Limit::TimeoutNever if !task => Limit::None,
            l => l,
        };
        let i = model.submit(kind, limit, task);
        let op = self.op(&ctx, i, kind, limit);
        let cancel = op.cancel_handle();
        let fut = if task {
            Fut::Task(ctx.spawn(async move {
                match limit {
                    Limit::TimeoutZero => timeout(Duration::ZERO, op).await,
                    Limit::TimeoutNever => timeout(NEVER, op).await,
                    _ => Ok(op.await),
                }
            }))
        } else {
            Fut::Held(op)
        };
        let s = model
            .slots
            .iter()
            .position(|&s| s == Some(i))
            .expect("its slot");
        self.slots[s] = Some(Slot { op: i, fut, cancel });
    }

    /// Polls slot `s` once; on a result, checks it against the model and frees the slot.
    /// Returns whether it resolved, and whether this poll submitted a held future.
    fn poll_slot(&mut self, model: &mut Model, s: usize) -> Result<(bool, bool), String> {
        let Some(slot) = &mut self.slots[s] else {
            return Ok((true, false));
        };
        let i = slot.op;
        let (got, first) = match &mut slot.fut {
            Fut::Held(fut) => {
                let first = !std::mem::replace(&mut model.ops[i].submitted, true);
                match poll_once(fut) {
                    Poll::Ready((res, buf)) => (Some(outcome(res, &buf)), first),
                    Poll::Pending => (None, first),
                }
            }
            Fut::Task(join) => match poll_once(join) {
                Poll::Ready(Ok(Ok((res, buf)))) => (Some(outcome(res, &buf)), false),
                Poll::Ready(Ok(Err(_elapsed))) => (Some(Outcome::Elapsed), false),
                Poll::Ready(Err(_join)) => (Some(Outcome::JoinCancelled), false),
                Poll::Pending => (None, false),
            },
        };
        let Some(got) = got else {
            return Ok((false, first));
        };
        self.slots[s] = None; // the buffer goes after the model took the result
        model.resolve(i, got)?;
        Ok((true, first))
    }

    fn wait(&mut self, model: &mut Model, s: usize) -> Result<(), String> {
        let Some(i) = self.slots[s].as_ref().map(|sl| sl.op) else {
            return Ok(());
        };
        if !model.must_resolve(i) {
            if let Some(ctx) = &self.ctx {
                ctx.poll(false);
            }
            return self.poll_slot(model, s).map(drop);
        }
        if self.ctx.is_none() {
            // Held futures never polled keep the context alive: submit them, so that it
            // goes (the last one's poll drops it).
            for t in 0..SLOTS {
                if let Some(sl) = &self.slots[t]
                    && matches!(sl.fut, Fut::Held(_))
                    && !model.ops[sl.op].submitted
                {
                    self.poll_slot(model, t)?;
                }
            }
        }
        loop {
            let (done, first) = self.poll_slot(model, s)?;
            if done {
                return Ok(());
            }
            if first {
                continue; // a refused submit resolves without the loop
            }
            match &self.ctx {
                Some(ctx) => {
                    ctx.poll(true);
                }
                None => {
                    // A worker-pool syscall may still be running on another thread.
                    if let Some(ctx) = self.weak.upgrade() {
                        ctx.poll(false);
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }

    fn feed(&mut self, model: &mut Model, pipe: usize, len: usize) {
        if model.pipe_len(pipe) + len > MAX_PIPE_DATA {
            return;
        }
        self.feeds = self.feeds.wrapping_add(1);
        let data = vec![0xB0 + self.feeds % 0x40; len];
        write_fd(self.pipes[pipe].1.as_raw_fd(), &data);
        model.feed(pipe, data);
    }

    fn drop_context(&mut self, model: &mut Model) {
        if let Some(ctx) = self.ctx.take() {
            ctx.shutdown_tasks();
            drop(ctx);
            model.ctx_dropped = true;
        }
    }

    /// Drains the sink and hands the model what was written and what was freed.
    fn sync(&mut self, model: &mut Model) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::read(self.sink.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            if buf[..n].contains(&CANARY) {
                return Err("a pipe write sent bytes of a buffer after its drop".into());
            }
            model.sink(&buf[..n])?;
        }
        for f in self.arena.take_freed() {
            model.freed(f.id, &f.data)?;
        }
        Ok(())
    }

    fn step(&mut self, model: &mut Model, op: Op) -> Result<(), String> {
        let slot = |s: u8| usize::from(s) % SLOTS;
        match op {
            Op::Submit(k, l) => self.submit(model, MKind::from_raw(k), l, false),
            Op::Spawn(k, l) => self.submit(model, MKind::from_raw(k), l, true),
            Op::Poll(s) => {
                self.poll_slot(model, slot(s))?;
            }
            Op::Wait(s) => self.wait(model, slot(s))?,
            Op::Drop(s) | Op::RemoteDrop(s) => {
                if let Some(sl) = self.slots[slot(s)].take() {
                    // A held future never polled holds the context: after the run let
                    // go of it, its drop may be the context's, which belongs on the
                    // home thread (a single-issuer ring dropped elsewhere leaks what is
                    // in flight, by design).
                    let remote = matches!(op, Op::RemoteDrop(_))
                        && !(model.ctx_dropped
                            && matches!(sl.fut, Fut::Held(_))
                            && !model.ops[sl.op].submitted);
                    match sl.fut {
                        Fut::Held(_) => model.drop_held(sl.op, !remote),
                        Fut::Task(_) => model.detach(sl.op),
                    }
                    if remote {
                        crate::on_remote_thread(move || drop(sl));
                    }
                }
            }
            Op::Cancel(s) | Op::RemoteCancel(s) => {
                if let Some(sl) = &self.slots[slot(s)] {
                    let remote = matches!(op, Op::RemoteCancel(_));
                    model.cancel(sl.op, !remote);
                    let cancel = sl.cancel.clone();
                    if remote {
                        crate::on_remote_thread(move || cancel.cancel());
                    } else {
                        cancel.cancel();
                    }
                }
            }
            Op::Feed { pipe, len } => {
                self.feed(model, usize::from(pipe) % PIPES, 1 + usize::from(len) % 16);
            }
            Op::PollCtx => {
                if let Some(ctx) = &self.ctx {
                    ctx.poll(false);
                }
            }
            Op::DropContext => self.drop_context(model),
        }
        self.sync(model)
    }

    /// Drops the context, resolves every slot, waits for every buffer and the context
    /// to be gone, and checks the leftovers.
    fn finish(&mut self, model: &mut Model) -> Result<(), String> {
        self.drop_context(model);
        for s in 0..SLOTS {
            self.wait(model, s)?;
        }
        while self.arena.live() > 0 || self.weak.strong_count() > 0 {
            // Worker-pool syscalls finishing on their threads (the watchdog bounds it).
            std::thread::sleep(Duration::from_micros(100));
        }
        self.sync(model)?;
        let bad = self.arena.overwritten();
        if !bad.is_empty() {
            return Err(format!(
                "buffers {bad:?} were written after their drop (freed under the kernel)"
            ));
        }
        let mut file = vec![0; FILE_LEN + 1];
        let n = std::os::unix::fs::FileExt::read_at(&self.file.file, &mut file, 0)
            .expect("read the file");
        file.truncate(n);
        model.finish(&file)
    }
}

/// Decodes `data` (libFuzzer bytes: the first picks the back end — bit 0: even
/// io_uring, odd epoll — and the [`Ring`] setup, bits 1 and 2) and [`run`]s it;
/// undecodable input is ignored.
pub fn run_bytes(data: &[u8]) {
    let Some(&b) = data.first() else {
        return;
    };
    let backend = if b % 2 == 0 {
        Backend::IoUring
    } else {
        Backend::Epoll
    };
    run_bytes_on(backend, data);
}

/// Decodes `data` like [`run_bytes`] but runs it on `backend`, whatever bit 0 of its
/// first byte says (the corpus replay runs every input on each back end).
pub fn run_bytes_on(backend: Backend, data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    if let Some(ops) = crate::decode::<Op>(rest) {
        run(backend, Ring::from_byte(b), &ops);
    }
}

/// Runs `ops` on a new context of `backend`, its ring set up as `ring` (io_uring falls
/// back to epoll where it is unavailable), and checks every step against the model;
/// then drops the context and checks that every buffer was freed, none under the
/// kernel.
///
/// # Panics
/// When the real operations and the model disagree (the message names the step), or
/// when the run hangs for 20 s (the watchdog aborts).
pub fn run(backend: Backend, ring: Ring, ops: &[Op]) {
    let mut real = Real::new(backend, ring);
    let watchdog = aioctx_testkit::Watchdog::named("io_ops", Duration::from_secs(20));
    let mut model = Model::new();
    let chosen = real.ctx.as_ref().map(|c| (c.backend(), c.ring_features()));
    for (step, &op) in ops.iter().enumerate() {
        watchdog.note(|s| *s = format!("{chosen:?}: step {step}: {op:?}"));
        if let Err(e) = real.step(&mut model, op) {
            panic!("io_ops ({chosen:?}): step {step} ({op:?}): {e}; ops: {ops:?}");
        }
    }
    watchdog.note(|s| *s = format!("{chosen:?}: the end (context dropped, slots resolved)"));
    if let Err(e) = real.finish(&mut model) {
        panic!("io_ops ({chosen:?}): at the end: {e}; ops: {ops:?}");
    }
    drop(watchdog);
}
