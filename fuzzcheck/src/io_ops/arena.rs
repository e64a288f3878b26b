//! The live-buffer counter: every buffer an operation owns is a [`Tracked`] of the run's
//! [`Arena`], counted alive until it is dropped. Its drop does not free the memory: it
//! records what the buffer held (a read's bytes say what the read consumed, also when
//! its future was gone), fills it with [`CANARY`] and keeps it in a quarantine, so a
//! kernel write into a buffer after its drop shows when the run checks the quarantine
//! after the context is gone.

use std::sync::{Arc, Mutex, MutexGuard};

/// What a dropped buffer is filled with; no data of a run contains it.
pub(super) const CANARY: u8 = 0xA5;

/// A buffer's drop, as the run sees it: which buffer, and the bytes it held.
pub(super) struct Freed {
    pub(super) id: usize,
    pub(super) data: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    live: usize,
    freed: Vec<Freed>,
    quarantine: Vec<(usize, Box<[u8]>)>,
}

/// The record of a run's buffers.
#[derive(Default)]
pub(super) struct Arena {
    inner: Mutex<Inner>,
}

impl Arena {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` bytes with id `id`: for a read (`fill: None`, nothing
    /// initialized) or for a write (`len` bytes of `fill`).
    pub(super) fn buf(self: &Arc<Self>, id: usize, len: usize, fill: Option<u8>) -> Tracked {
        self.lock().live += 1;
        Tracked {
            id,
            mem: Some(vec![fill.unwrap_or(0); len].into_boxed_slice()),
            init: if fill.is_some() { len } else { 0 },
            arena: Arc::clone(self),
        }
    }

    /// The buffers dropped since the last call, in the order of their drops.
    pub(super) fn take_freed(&self) -> Vec<Freed> {
        std::mem::take(&mut self.lock().freed)
    }

    /// How many buffers are alive.
    pub(super) fn live(&self) -> usize {
        self.lock().live
    }

    /// The ids of quarantined buffers the kernel wrote into after their drop.
    pub(super) fn overwritten(&self) -> Vec<usize> {
        let inner = self.lock();
        inner
            .quarantine
            .iter()
            .filter(|(_, mem)| mem.iter().any(|&b| b != CANARY))
            .map(|&(id, _)| id)
            .collect()
    }
}

/// A buffer counted alive in its [`Arena`] until dropped (see the module docs).
pub(super) struct Tracked {
    id: usize,
    mem: Option<Box<[u8]>>,
    init: usize,
    arena: Arc<Arena>,
}

impl Tracked {
    /// The initialized bytes (what a read returned).
    pub(super) fn data(&self) -> &[u8] {
        &self.mem.as_deref().expect("buffer memory")[..self.init]
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut mem = self.mem.take().expect("buffer memory");
        let data = mem[..self.init].to_vec();
        mem.fill(CANARY);
        let mut inner = self.arena.lock();
        inner.live -= 1;
        inner.freed.push(Freed { id: self.id, data });
        inner.quarantine.push((self.id, mem));
    }
}

// SAFETY: the memory is a boxed slice (it does not move with the value) that is only
// taken out in `Drop`, and its first `init` bytes are initialized (all of them are:
// it is created filled).
unsafe impl aioctx_aio::IoBuf for Tracked {
    fn stable_ptr(&self) -> *const u8 {
        self.mem.as_deref().expect("buffer memory").as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.init
    }
}

// SAFETY: as above; the pointer comes from `&mut self`, valid for the slice's length.
unsafe impl aioctx_aio::IoBufMut for Tracked {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.mem.as_deref_mut().expect("buffer memory").as_mut_ptr()
    }
    fn bytes_total(&mut self) -> usize {
        self.mem.as_deref().expect("buffer memory").len()
    }
    unsafe fn set_init(&mut self, n: usize) {
        self.init = n;
    }
}
