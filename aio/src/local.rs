//! Context-local slots: state an upper layer keeps per context without this crate
//! knowing it (the graph lock keeps its per-context reader counter here).
//!
//! A [`ContextLocal`] is declared once (usually in a `static`); each context lazily
//! holds one value for it, created on first access and dropped with the context, so a
//! value's `Drop` is the layer's "context destroyed" hook.

use std::any::Any;
use std::sync::OnceLock;

// The slot index is a process-wide key assigned once, not protocol state: it stays
// `std` under loom too (loom's atomics cannot be built in a `const fn` for statics).
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many distinct [`ContextLocal`] keys a process may declare.
pub const MAX_CONTEXT_LOCALS: usize = 16;

static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

/// A context's value for one key.
pub(crate) type Value = Box<dyn Any + Send + Sync>;

/// One slot of a context: the value, and which thread runs its `init` (0: none), so
/// that a re-entrant initialisation is refused instead of deadlocking in the `OnceLock`.
pub(crate) struct Slot {
    value: OnceLock<Value>,
    // Not protocol state: only ever compared with the caller's own thread id, so `std`
    // and Relaxed (the same thread wrote it, or it is not this thread's id).
    initializing: AtomicU64,
}

/// The per-context storage behind [`ContextLocal`].
pub(crate) type Slots = [Slot; MAX_CONTEXT_LOCALS];

pub(crate) fn new_slots() -> Slots {
    std::array::from_fn(|_| Slot {
        value: OnceLock::new(),
        initializing: AtomicU64::new(0),
    })
}

impl Slot {
    /// The value, if created.
    pub(crate) fn get(&self) -> Option<&Value> {
        self.value.get()
    }

    /// The value, created by `init` if absent (another thread's creation is waited for).
    ///
    /// # Panics
    /// When `init` (directly or through anything it calls) asks for this same slot: the
    /// value it would return is the one being created.
    pub(crate) fn get_or_init(&self, init: impl FnOnce() -> Value) -> &Value {
        if let Some(v) = self.value.get() {
            return v;
        }
        let me = crate::context::thread_id();
        if self.initializing.load(Ordering::Relaxed) == me {
            panic!(
                "AioContext::local: the init closure of a ContextLocal asked for the same \
                 key of the same context (re-entrant initialisation); create the value \
                 without reading its own slot"
            );
        }
        self.value.get_or_init(|| {
            /// Clears the mark on return and on unwind.
            struct Initializing<'a>(&'a AtomicU64);
            impl Drop for Initializing<'_> {
                fn drop(&mut self) {
                    self.0.store(0, Ordering::Relaxed);
                }
            }
            self.initializing.store(me, Ordering::Relaxed);
            let _mark = Initializing(&self.initializing);
            init()
        })
    }
}

/// A key for one value of type `T` per context (see [`AioContext::local`]).
///
/// ```
/// use aioctx_aio::{AioContext, ContextLocal};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// static COUNTER: ContextLocal<AtomicU32> = ContextLocal::new();
/// let ctx = AioContext::new()?;
/// ctx.local(&COUNTER, || AtomicU32::new(7)).fetch_add(1, Ordering::Relaxed);
/// assert_eq!(ctx.local(&COUNTER, || unreachable!()).load(Ordering::Relaxed), 8);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// [`AioContext::local`]: crate::AioContext::local
pub struct ContextLocal<T> {
    index: AtomicUsize,
    _marker: std::marker::PhantomData<fn() -> T>,
}

const UNASSIGNED: usize = usize::MAX;

impl<T: Send + Sync + 'static> ContextLocal<T> {
    /// A new key; its slot index is assigned on first use.
    pub const fn new() -> Self {
        Self {
            index: AtomicUsize::new(UNASSIGNED),
            _marker: std::marker::PhantomData,
        }
    }

    pub(crate) fn index(&self) -> usize {
        let index = self.index.load(Ordering::Relaxed);
        if index != UNASSIGNED {
            return index;
        }
        let fresh = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        assert!(
            fresh < MAX_CONTEXT_LOCALS,
            "more than {MAX_CONTEXT_LOCALS} ContextLocal keys declared"
        );
        // Relaxed: the index is a plain number; losing the race just wastes one slot
        // index and everybody uses the winner's.
        match self
            .index
            .compare_exchange(UNASSIGNED, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh,
            Err(winner) => winner,
        }
    }
}

impl<T: Send + Sync + 'static> Default for ContextLocal<T> {
    fn default() -> Self {
        Self::new()
    }
}
