//! The reference model of [`super`]: what each operation may resolve to, the pipes'
//! contents, the file's possible bytes and the sink's writes.

use std::collections::VecDeque;

use super::{Limit, PIPES, SLOTS};

/// The file's length; writes never go past it, so it never changes.
pub(super) const FILE_LEN: usize = 512;
/// The file's initial bytes.
pub(super) const INIT: u8 = 0xFE;
/// How many operations a run submits at most (each gets a distinct fill byte).
pub(super) const MAX_OPS: usize = 200;
/// How many bytes a pipe holds at most (a feed beyond it is skipped: never blocks).
pub(super) const MAX_PIPE_DATA: usize = 1024;

/// An operation, its arguments brought into range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    PipeRead {
        pipe: usize,
        len: usize,
    },
    PipeWrite {
        len: usize,
    },
    FileRead {
        off: usize,
        len: usize,
    },
    FileWrite {
        off: usize,
        len: usize,
    },
    /// A zero-length read of the file: completes at once with 0.
    Nop,
}

impl Kind {
    pub(super) fn from_raw(raw: super::Kind) -> Self {
        let off = |o: u8| usize::from(o) * 8 % FILE_LEN;
        match raw {
            super::Kind::PipeRead { pipe, len } => Kind::PipeRead {
                pipe: usize::from(pipe) % PIPES,
                len: 1 + usize::from(len) % 32,
            },
            super::Kind::PipeWrite { len } => Kind::PipeWrite {
                len: 1 + usize::from(len) % 64,
            },
            super::Kind::FileRead { off: o, len } => Kind::FileRead {
                off: off(o),
                len: 1 + usize::from(len) % 64,
            },
            super::Kind::FileWrite { off: o, len } => Kind::FileWrite {
                off: off(o),
                len: (1 + usize::from(len) % 64).min(FILE_LEN - off(o)),
            },
            super::Kind::Nop => Kind::Nop,
        }
    }

    /// The length of the operation's buffer.
    pub(super) fn buf_len(self) -> usize {
        match self {
            Kind::PipeRead { len, .. }
            | Kind::PipeWrite { len }
            | Kind::FileRead { len, .. }
            | Kind::FileWrite { len, .. } => len,
            Kind::Nop => 0,
        }
    }

    /// Whether the buffer is sent (filled with the op's byte) rather than read into.
    pub(super) fn writes(self) -> bool {
        matches!(self, Kind::PipeWrite { .. } | Kind::FileWrite { .. })
    }
}

/// The fill byte of operation `i`: distinct per operation, never the canary or [`INIT`].
pub(super) fn fill(i: usize) -> u8 {
    let b = i + 1;
    let b = if b >= usize::from(super::arena::CANARY) {
        b + 1
    } else {
        b
    };
    u8::try_from(b).expect("at most MAX_OPS operations")
}

/// What a resolved future gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// `Ok(n)`, with the bytes the buffer holds.
    Ok(usize, Vec<u8>),
    /// `ECANCELED`, with how many bytes the buffer holds.
    Cancelled(usize),
    /// `TimedOut` (a passed per-operation deadline), with the buffer's byte count.
    TimedOut(usize),
    /// `timeout`'s `Elapsed` (the task's inner future was dropped).
    Elapsed,
    /// The task's `JoinError` (its context was dropped).
    JoinCancelled,
    /// Any other result.
    Other(String),
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Its future (or task) is held and has not resolved.
    Live,
    /// Its result is lost (future dropped, task detached, `Elapsed`, `JoinError`): done
    /// once its buffer is freed.
    Dropped,
    /// Finished: its result was checked, or its buffer freed after it was dropped.
    Done,
}

#[derive(Debug)]
pub(super) struct MOp {
    pub(super) kind: Kind,
    pub(super) limit: Limit,
    pub(super) task: bool,
    pub(super) state: State,
    /// A held future was polled (the operation went to its back end).
    pub(super) submitted: bool,
    cancelled: bool,
    /// Cancelled or dropped before it was submitted: it never runs.
    never_started: bool,
    /// A pipe read had data in its pipe at some point while it could still take it.
    saw_data: bool,
    /// Its cancel was issued on the home thread with the loop idle: data fed later
    /// cannot reach it (\[IO6\], \[CH1\]).
    stopped: bool,
    buf_freed: bool,
    /// File writes that were in flight at some point while this one was.
    concurrent: Vec<usize>,
    /// A file read: per byte of its range, every value it could have read (what the
    /// file could hold when it was submitted, and what writes submitted since put).
    seen: Vec<[u64; 4]>,
    wrote_sink: bool,
    outcome: Option<Outcome>,
}

/// The model of one run.
pub(super) struct Model {
    pub(super) ops: Vec<MOp>,
    pub(super) slots: [Option<usize>; SLOTS],
    /// Each pipe's unread data, as the chunks it was written in.
    pipes: [VecDeque<Vec<u8>>; PIPES],
    /// Per file byte, the set of values it may hold (a 256-bit set).
    file: Vec<[u64; 4]>,
    pub(super) ctx_dropped: bool,
    /// Sink bytes drained but not parsed yet.
    sink: Vec<u8>,
}

fn has(set: &[u64; 4], b: u8) -> bool {
    set[usize::from(b / 64)] & (1 << (b % 64)) != 0
}

fn add(set: &mut [u64; 4], b: u8) {
    set[usize::from(b / 64)] |= 1 << (b % 64);
}

impl Model {
    pub(super) fn new() -> Self {
        let mut init = [0; 4];
        add(&mut init, INIT);
        Self {
            ops: Vec::new(),
            slots: [None; SLOTS],
            pipes: Default::default(),
            file: vec![init; FILE_LEN],
            ctx_dropped: false,
            sink: Vec::new(),
        }
    }

    /// Whether `kind` may be submitted now; a pipe has one read in flight at most.
    pub(super) fn can_submit(&self, kind: Kind) -> bool {
        !self.ctx_dropped
            && self.ops.len() < MAX_OPS
            && self.slots.iter().any(Option::is_none)
            && match kind {
                Kind::PipeRead { pipe, .. } => !self.ops.iter().any(|o| {
                    o.state != State::Done
                        && matches!(o.kind, Kind::PipeRead { pipe: p, .. } if p == pipe)
                }),
                _ => true,
            }
    }

    /// Records a new operation in the first free slot; returns its index.
    pub(super) fn submit(&mut self, kind: Kind, limit: Limit, task: bool) -> usize {
        let i = self.ops.len();
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .expect("a free slot");
        self.slots[slot] = Some(i);
        let mut concurrent = Vec::new();
        if let Kind::FileWrite { off, len } = kind {
            for b in &mut self.file[off..off + len] {
                add(b, fill(i));
            }
            for (j, o) in self.ops.iter_mut().enumerate() {
                if o.state != State::Done && matches!(o.kind, Kind::FileWrite { .. }) {
                    o.concurrent.push(i);
                    concurrent.push(j);
                }
            }
        }
        if let Kind::FileWrite { off, len } = kind {
            for o in &mut self.ops {
                if let Kind::FileRead { off: r, .. } = o.kind
                    && o.state != State::Done
                {
                    for (k, set) in o.seen.iter_mut().enumerate() {
                        if (off..off + len).contains(&(r + k)) {
                            add(set, fill(i));
                        }
                    }
                }
            }
        }
        let seen = match kind {
            Kind::FileRead { off, len } => self.file[off..(off + len).min(FILE_LEN)].to_vec(),
            _ => Vec::new(),
        };
        let saw_data = matches!(kind, Kind::PipeRead { pipe, .. } if !self.pipes[pipe].is_empty());
        self.ops.push(MOp {
            kind,
            limit,
            task,
            state: State::Live,
            submitted: task,
            cancelled: false,
            never_started: false,
            saw_data,
            stopped: false,
            buf_freed: false,
            concurrent,
            seen,
            wrote_sink: false,
            outcome: None,
        });
        i
    }

    fn free_slot(&mut self, i: usize) {
        for s in &mut self.slots {
            if *s == Some(i) {
                *s = None;
            }
        }
    }

    /// Data written into a pipe: reads that may still take it see it.
    pub(super) fn feed(&mut self, pipe: usize, data: Vec<u8>) {
        for o in &mut self.ops {
            if o.state != State::Done
                && !o.stopped
                && matches!(o.kind, Kind::PipeRead { pipe: p, .. } if p == pipe)
            {
                o.saw_data = true;
            }
        }
        self.pipes[pipe].push_back(data);
    }

    pub(super) fn pipe_len(&self, pipe: usize) -> usize {
        self.pipes[pipe].iter().map(Vec::len).sum()
    }

    /// The explicit cancel handle's `cancel`: on the home thread with the loop idle
    /// (`home`), or on another thread, which hands the cancel to the loop.
    pub(super) fn cancel(&mut self, i: usize, home: bool) {
        let o = &mut self.ops[i];
        if o.state != State::Live {
            return;
        }
        o.cancelled = true;
        o.stopped |= home;
        if !o.submitted {
            o.never_started = true;
        }
    }

    /// The held future was dropped: on the home thread with the loop idle (`home`), or
    /// on another thread.
    pub(super) fn drop_held(&mut self, i: usize, home: bool) {
        let o = &mut self.ops[i];
        o.state = if o.buf_freed {
            State::Done
        } else {
            State::Dropped
        };
        o.stopped |= home;
        if !o.submitted {
            o.never_started = true;
        }
        self.free_slot(i);
    }

    /// The task's `JoinHandle` was dropped: it runs on, detached.
    pub(super) fn detach(&mut self, i: usize) {
        let o = &mut self.ops[i];
        o.state = if o.buf_freed {
            State::Done
        } else {
            State::Dropped
        };
        self.free_slot(i);
    }

    /// Whether the operation could have done its work.
    fn may_have_run(&self, i: usize) -> bool {
        let o = &self.ops[i];
        !o.never_started && (!matches!(o.kind, Kind::PipeRead { .. }) || o.saw_data)
    }

    /// Whether the operation's future must resolve if the run waits long enough.
    pub(super) fn must_resolve(&self, i: usize) -> bool {
        let o = &self.ops[i];
        o.cancelled
            || self.ctx_dropped
            || matches!(o.limit, Limit::DeadlineZero | Limit::TimeoutZero)
            || self.may_have_run(i)
    }

    /// A read took `data` from `pipe` (`len`: the read's size): it must be what a pipe
    /// read returns, the pipe's first bytes up to a write's boundary or `len`.
    fn consume(&mut self, pipe: usize, len: usize, data: &[u8]) -> Result<(), String> {
        let chunks = &mut self.pipes[pipe];
        let mut sum = 0;
        let fits = chunks.iter().any(|c| {
            sum += c.len();
            sum.min(len) == data.len()
        });
        let front: Vec<u8> = chunks.iter().flatten().copied().take(data.len()).collect();
        if data.is_empty() || !fits || front != data {
            return Err(format!(
                "a read of {len} bytes on pipe {pipe} returned {data:?}, but the pipe held \
                 {chunks:?} (a read returns the first bytes, up to a write's end or its size)"
            ));
        }
        let mut n = data.len();
        while n > 0 {
            let c = chunks.front_mut().expect("checked above");
            if c.len() <= n {
                n -= c.len();
                chunks.pop_front();
            } else {
                c.drain(..n);
                n = 0;
            }
        }
        Ok(())
    }

    /// The bytes a dropped read's buffer held when it was freed: what it consumed.
    fn consumed(&mut self, i: usize, data: &[u8]) -> Result<(), String> {
        let o = &self.ops[i];
        if data.is_empty() || !matches!(o.kind, Kind::PipeRead { .. } | Kind::FileRead { .. }) {
            return Ok(());
        }
        if !self.may_have_run(i) {
            return Err(format!(
                "op {i} ({:?}) read {data:?} into its buffer, but it never started or its \
                 pipe never had data for it",
                o.kind
            ));
        }
        match o.kind {
            Kind::PipeRead { pipe, len } => self.consume(pipe, len, data),
            _ => Ok(()),
        }
    }

    /// Buffer `i` was dropped, holding `data`.
    pub(super) fn freed(&mut self, i: usize, data: &[u8]) -> Result<(), String> {
        let o = &mut self.ops[i];
        if std::mem::replace(&mut o.buf_freed, true) {
            return Err(format!("op {i}: its buffer was dropped twice"));
        }
        match o.state {
            State::Done => Ok(()),
            State::Live if !o.task => Err(format!(
                "op {i} ({:?}): its buffer was freed while its future is held, unresolved",
                o.kind
            )),
            State::Live if !(o.limit == Limit::TimeoutZero || (self.ctx_dropped && o.task)) => {
                Err(format!(
                    "op {i} ({:?}): its buffer was freed while its task runs, with no timeout \
                     and its context alive",
                    o.kind
                ))
            }
            State::Live => self.consumed(i, data),
            State::Dropped => {
                o.state = State::Done;
                self.consumed(i, data)
            }
        }
    }

    /// The future of op `i` resolved with `got`: checks it is one of the outcomes the
    /// model allows, and applies it.
    pub(super) fn resolve(&mut self, i: usize, got: Outcome) -> Result<(), String> {
        self.free_slot(i);
        let may_run = self.may_have_run(i);
        let o = &mut self.ops[i];
        assert_eq!(o.state, State::Live, "op {i} resolved twice");
        let reads = !o.kind.writes();
        let cancel = o.cancelled || self.ctx_dropped;
        let allowed = match &got {
            Outcome::Ok(..) => may_run,
            Outcome::Cancelled(n) => cancel && o.limit != Limit::DeadlineZero && !(reads && *n > 0),
            Outcome::TimedOut(n) => o.limit == Limit::DeadlineZero && !(reads && *n > 0),
            Outcome::Elapsed => o.task && o.limit == Limit::TimeoutZero,
            Outcome::JoinCancelled => o.task && self.ctx_dropped,
            Outcome::Other(_) => false,
        };
        if !allowed {
            return Err(format!(
                "op {i} ({:?}, {:?}, {}, cancelled: {}, context dropped: {}, may have run: \
                 {may_run}) resolved to {got:?}, which the model does not allow",
                o.kind,
                o.limit,
                if o.task { "task" } else { "held" },
                o.cancelled,
                self.ctx_dropped
            ));
        }
        o.outcome = Some(got.clone());
        o.state = match got {
            Outcome::Elapsed | Outcome::JoinCancelled if !o.buf_freed => State::Dropped,
            _ => State::Done,
        };
        let Outcome::Ok(n, data) = got else {
            return Ok(());
        };
        let kind = o.kind;
        let bad = |what: &str| Err(format!("op {i} ({kind:?}) returned {n}: {what}"));
        match kind {
            Kind::PipeRead { pipe, len } => self.consume(pipe, len, &data)?,
            Kind::PipeWrite { len } if n != len => return bad("a short pipe write"),
            Kind::FileRead { off, len } => {
                if n != len.min(FILE_LEN - off) || data.len() != n {
                    return bad("not the file's length");
                }
                for (k, &b) in data.iter().enumerate() {
                    if !has(&self.ops[i].seen[k], b) {
                        return bad(&format!("byte {k} is {b:#x}, which no write put there"));
                    }
                }
            }
            Kind::FileWrite { off, len } => {
                if n != len {
                    return bad("a short file write");
                }
                // Written: the bytes hold this write's fill, or a concurrent one's.
                for (k, b) in self.file[off..off + len].iter_mut().enumerate() {
                    let mut set = [0; 4];
                    add(&mut set, fill(i));
                    for &j in &self.ops[i].concurrent {
                        if let Kind::FileWrite { off: o2, len: l2 } = self.ops[j].kind
                            && (o2..o2 + l2).contains(&(off + k))
                        {
                            add(&mut set, fill(j));
                        }
                    }
                    *b = set;
                }
            }
            Kind::Nop if n != 0 => return bad("a zero-length read"),
            _ => {}
        }
        Ok(())
    }

    /// Bytes drained from the sink: whole writes of pipe-write operations that may
    /// have run, each at most once.
    pub(super) fn sink(&mut self, data: &[u8]) -> Result<(), String> {
        self.sink.extend_from_slice(data);
        while let Some(&b) = self.sink.first() {
            let Some(i) = (0..self.ops.len()).find(|&i| fill(i) == b) else {
                return Err(format!("the sink got byte {b:#x}, which no write sent"));
            };
            let Kind::PipeWrite { len } = self.ops[i].kind else {
                return Err(format!(
                    "the sink got op {i}'s byte, which is not a pipe write"
                ));
            };
            if self.sink.len() < len {
                return Ok(()); // the rest comes with the next drain
            }
            if self.sink[..len].iter().any(|&x| x != b) || self.ops[i].wrote_sink {
                return Err(format!(
                    "the sink holds {:?}: not whole writes, each once",
                    self.sink
                ));
            }
            if !self.may_have_run(i) {
                return Err(format!("op {i} wrote to the sink, but it never started"));
            }
            self.ops[i].wrote_sink = true;
            self.sink.drain(..len);
        }
        Ok(())
    }

    /// The end of the run: every operation done, every pipe write that reported
    /// success in the sink and none that reported a cancel, the file's bytes possible.
    pub(super) fn finish(&self, file: &[u8]) -> Result<(), String> {
        if !self.sink.is_empty() {
            return Err(format!(
                "the sink ends with a partial write: {:?}",
                self.sink
            ));
        }
        for (i, o) in self.ops.iter().enumerate() {
            if o.state != State::Done {
                return Err(format!(
                    "op {i} ({:?}) is {:?} at the end: its buffer was never freed (leaked)",
                    o.kind, o.state
                ));
            }
            if let Kind::PipeWrite { .. } = o.kind {
                let ok = matches!(o.outcome, Some(Outcome::Ok(..)));
                let refused = matches!(
                    o.outcome,
                    Some(Outcome::Cancelled(_) | Outcome::TimedOut(_))
                );
                if (ok && !o.wrote_sink) || (refused && o.wrote_sink) {
                    return Err(format!(
                        "op {i}: resolved to {:?}, but its bytes are {}in the sink",
                        o.outcome,
                        if o.wrote_sink { "" } else { "not " }
                    ));
                }
            }
        }
        if file.len() != FILE_LEN {
            return Err(format!("the file is {} bytes long", file.len()));
        }
        for (k, &b) in file.iter().enumerate() {
            if !has(&self.file[k], b) {
                return Err(format!("file byte {k} is {b:#x}, which no write put there"));
            }
        }
        Ok(())
    }
}
