//! Cancellation stress: I/O futures dropped at pseudo-random points (before their first
//! poll, after it, after some loop iterations, after they completed), 10^4 of them,
//! mixed reads and writes on a pipe nobody writes to, a pipe the test writes to, a pipe
//! the test drains, and a regular file — on whichever back end this run selects
//! (io_uring by default, `AIOCTX_BACKEND=epoll`).
//!
//! The buffers are [`Tracked`]: each has an id in a per-test [`Arena`]. Dropping one
//! does not free its memory: it fills it with a canary byte ([`CANARY`], which no data
//! of the test contains) and moves it into the arena's quarantine. So the rule "a
//! buffer outlives the kernel's use of it" is checked directly, after the context is
//! dropped (when every operation has reached its final completion):
//! - a read that reached a buffer after its drop left data bytes over the canary;
//! - a write that read a buffer after its drop sent canary bytes to the drained pipe or
//!   the file;
//!
//! and, besides: every buffer is dropped exactly once, and none is alive at the end.
#![cfg(not(loom))]

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use aioctx::aio::{AioContext, IoBuf, IoBufMut, RingOp};
use common::{Rng, Watchdog, new_ctx, pipe, poll_once, tempfile};

/// What a dropped buffer is filled with; no data the test writes contains it.
const CANARY: u8 = 0xA5;
/// How many operations the test creates.
const OPS: usize = 10_000;
/// How many futures are alive at once, at most.
const LIVE: usize = 24;
/// The regular file's size window (reads and writes fall in it).
const FILE_SPAN: u64 = 64 * 1024;

/// The per-test record of every buffer.
#[derive(Default)]
struct Arena {
    inner: Mutex<ArenaInner>,
}

#[derive(Default)]
struct ArenaInner {
    /// Whether buffer `id` was dropped.
    dropped: Vec<bool>,
    /// How many buffers are alive.
    live: usize,
    /// Dropped buffers' memory, kept to check the canary.
    quarantine: Vec<(usize, Box<[u8]>)>,
    /// Protocol violations seen in `Drop` (reported at the end, not panicked there:
    /// the drop may run inside the back end).
    errors: Vec<String>,
}

impl Arena {
    fn lock(&self) -> std::sync::MutexGuard<'_, ArenaInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new buffer of `len` bytes, filled with `fill` (data for a write).
    fn buf(self: &Arc<Self>, len: usize, fill: u8) -> Tracked {
        let mut inner = self.lock();
        let id = inner.dropped.len();
        inner.dropped.push(false);
        inner.live += 1;
        Tracked {
            id,
            mem: Some(vec![fill; len].into_boxed_slice()),
            init: len,
            arena: Arc::clone(self),
        }
    }
}

/// A buffer whose drop is recorded in its [`Arena`] and whose memory is quarantined.
struct Tracked {
    id: usize,
    mem: Option<Box<[u8]>>,
    init: usize,
    arena: Arc<Arena>,
}

impl Tracked {
    fn mem(&self) -> &[u8] {
        self.mem.as_deref().expect("buffer memory")
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut mem = self.mem.take().expect("buffer memory");
        mem.fill(CANARY);
        let mut inner = self.arena.lock();
        if std::mem::replace(&mut inner.dropped[self.id], true) {
            inner
                .errors
                .push(format!("buffer {} dropped twice", self.id));
        }
        inner.live -= 1;
        inner.quarantine.push((self.id, mem));
    }
}

// SAFETY: the memory is a boxed slice (it does not move with the value), never freed
// while the value is alive (the box is only taken out in `Drop`), and `init` bytes of
// it are initialized (all of them: it is created filled).
unsafe impl IoBuf for Tracked {
    fn stable_ptr(&self) -> *const u8 {
        self.mem().as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.init
    }
}

// SAFETY: as above; the pointer comes from `&mut self`, valid for `len` bytes.
unsafe impl IoBufMut for Tracked {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.mem.as_deref_mut().expect("buffer memory").as_mut_ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.mem().len()
    }
    unsafe fn set_init(&mut self, n: usize) {
        self.init = n;
    }
}

/// What an operation targets, and whether it reads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A read on a pipe nobody writes to: never completes.
    IdleRead,
    /// A read on a pipe the test writes to.
    FedRead,
    /// A write on a pipe the test drains (may fill it and wait).
    PipeWrite,
    /// A read of the regular file.
    FileRead,
    /// A write of the regular file.
    FileWrite,
}

const KINDS: [Kind; 5] = [
    Kind::IdleRead,
    Kind::FedRead,
    Kind::PipeWrite,
    Kind::FileRead,
    Kind::FileWrite,
];

struct Live {
    kind: Kind,
    fut: RingOp<Tracked>,
}

/// A data byte for round `i`: never [`CANARY`].
fn data_byte(i: usize) -> u8 {
    (i % 0x7F) as u8 + 1
}

/// Non-blocking `read` of everything in `fd` (opened `O_NONBLOCK`); panics on a canary.
fn drain(fd: RawFd, what: &str) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return total;
        }
        let n = n as usize;
        assert!(
            !buf[..n].contains(&CANARY),
            "{what}: a write sent bytes of a buffer after the buffer was dropped"
        );
        total += n;
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on a descriptor we own, with plain integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    let res = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    assert_eq!(res, 0, "fcntl O_NONBLOCK");
}

/// Checks a completed operation's result and its returned buffer.
fn check_done(kind: Kind, res: std::io::Result<usize>, buf: &Tracked) {
    let n = match res {
        Ok(n) => n,
        Err(e) => panic!("{kind:?}: an operation nobody cancelled failed: {e}"),
    };
    assert_ne!(
        kind,
        Kind::IdleRead,
        "a read on a pipe nobody writes to completed"
    );
    assert!(
        n <= buf.mem().len(),
        "{kind:?}: result {n} beyond the buffer"
    );
    if matches!(kind, Kind::FedRead | Kind::FileRead) {
        assert!(
            !buf.mem()[..n].contains(&CANARY),
            "{kind:?}: a read returned canary bytes"
        );
    }
}

fn stress(ctx: Arc<AioContext>, seed: u64) {
    let dog = Watchdog::on_ctx(&ctx);
    let arena = Arc::new(Arena::default());
    let mut rng = Rng::new(seed);
    let (idle_r, _idle_w) = pipe();
    let (fed_r, fed_w) = pipe();
    set_nonblocking(&fed_w);
    let (sink_r, sink_w) = pipe();
    set_nonblocking(&sink_r);
    let file = tempfile("cancel-stress");
    file.file.set_len(FILE_SPAN).expect("size the file");
    // Initial contents: data bytes, never the canary.
    let init = vec![data_byte(0); FILE_SPAN as usize];
    std::os::unix::fs::FileExt::write_all_at(&file.file, &init, 0).expect("fill the file");
    let ffd = file.file.as_raw_fd();

    let mut live: Vec<Live> = Vec::new();
    let mut created = 0;
    let mut completed = [0usize; KINDS.len()];
    while created < OPS || !live.is_empty() {
        if created % 1000 == 0 {
            dog.note(|s| *s = format!("op {created}, {} alive", live.len()));
        }
        match rng.below(8) {
            // Create an operation (dropped at once one time in eight).
            0..=2 if created < OPS && live.len() < LIVE => {
                let kind = KINDS[rng.below(KINDS.len())];
                let len = 1 + rng.below(256);
                let off = rng.below((FILE_SPAN as usize) - len) as u64;
                let fut = match kind {
                    Kind::IdleRead => ctx.read_at(idle_r.as_raw_fd(), arena.buf(len, 0), 0),
                    Kind::FedRead => ctx.read_at(fed_r.as_raw_fd(), arena.buf(len, 0), 0),
                    Kind::FileRead => ctx.read_at(ffd, arena.buf(len, 0), off),
                    Kind::PipeWrite => {
                        ctx.write_at(sink_w.as_raw_fd(), arena.buf(len, data_byte(created)), 0)
                    }
                    Kind::FileWrite => ctx.write_at(ffd, arena.buf(len, data_byte(created)), off),
                };
                created += 1;
                if rng.below(8) == 0 {
                    drop(fut);
                } else {
                    live.push(Live { kind, fut });
                }
            }
            // Poll one future: keep it if pending, check it if done.
            3 | 4 if !live.is_empty() => {
                let i = rng.below(live.len());
                if let Poll::Ready((res, buf)) = poll_once(&mut live[i].fut) {
                    let done = live.swap_remove(i);
                    check_done(done.kind, res, &buf);
                    completed[KINDS.iter().position(|&k| k == done.kind).unwrap()] += 1;
                }
            }
            // Drop one future, wherever it is.
            5 if !live.is_empty() => {
                let i = rng.below(live.len());
                drop(live.swap_remove(i));
            }
            // Run the loop without blocking.
            6 => {
                ctx.poll(false);
            }
            // Feed the fed pipe, drain the sink.
            _ => {
                let data = vec![data_byte(created); 1 + rng.below(64)];
                // SAFETY: `data` is valid for reads of its length; the write end is
                // non-blocking, and a full pipe (EAGAIN) is fine.
                let _ = unsafe { libc::write(fed_w.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                drain(sink_r.as_raw_fd(), "pipe write");
            }
        }
        if created >= OPS {
            // Wind down: drop what is left, half of it after one more loop iteration.
            if rng.below(2) == 0 {
                ctx.poll(false);
            }
            live.pop();
        }
    }
    drop(dog);
    drop(ctx); // reaps every operation's final completion
    drain(sink_r.as_raw_fd(), "pipe write");
    let mut contents = Vec::new();
    std::io::Read::read_to_end(&mut &file.file, &mut contents).expect("read the file");
    assert!(
        !contents.contains(&CANARY),
        "file write: a write sent bytes of a buffer after the buffer was dropped"
    );

    let inner = arena.lock();
    assert!(inner.errors.is_empty(), "{:?}", inner.errors);
    assert_eq!(
        inner.dropped.len(),
        created,
        "every operation had one buffer"
    );
    assert_eq!(
        inner.live, 0,
        "buffers leaked after the context was dropped"
    );
    let never: Vec<usize> = (0..created).filter(|&i| !inner.dropped[i]).collect();
    assert!(never.is_empty(), "buffers never dropped: {never:?}");
    for (id, mem) in &inner.quarantine {
        assert!(
            mem.iter().all(|&b| b == CANARY),
            "buffer {id}: the kernel wrote into it after it was dropped (a read was \
             still in flight when its buffer was freed)"
        );
    }
    println!("completed per kind {KINDS:?}: {completed:?}");
    // Every kind but the idle read completes now and then, or the mix tests nothing.
    assert!(
        completed[1..].iter().all(|&n| n > 0),
        "completed per kind {KINDS:?}: {completed:?}: the mix is broken"
    );
}

/// The stress run on the back end this run selects.
#[test]
fn dropped_futures_never_free_a_buffer_under_the_kernel() {
    stress(new_ctx(), 0x5eed_cafe);
}

/// The same with a second seed.
#[test]
fn dropped_futures_never_free_a_buffer_under_the_kernel_seed2() {
    stress(new_ctx(), 0xdead_beef);
}

/// epoll: a read on a pipe, dropped while it waits, then another read on the same
/// pipe, many times. The stream table registers a duplicate of the descriptor in its
/// epoll set; removing the entry must delete that interest before it closes the
/// duplicate — closing it alone does not (the user's descriptor keeps the open file
/// alive, and epoll drops an interest only with the file's last descriptor), so the
/// next duplicate, which gets the same number, was refused with `EEXIST`.
#[test]
fn epoll_a_read_after_a_dropped_read_on_the_same_pipe_waits() {
    let ctx = AioContext::builder()
        .backend(aioctx::aio::Backend::Epoll)
        .build()
        .expect("an epoll context");
    let _dog = Watchdog::on_ctx(&ctx);
    let (r, _w) = pipe();
    for round in 0..8 {
        let mut read = ctx.read_at(r.as_raw_fd(), vec![0u8; 16], 0);
        assert!(
            poll_once(&mut read).is_pending(),
            "round {round}: first poll"
        );
        ctx.poll(false);
        if let Poll::Ready((res, _)) = poll_once(&mut read) {
            panic!("round {round}: a read on a pipe nobody writes to completed: {res:?}");
        }
        drop(read);
        ctx.poll(false);
    }
}
