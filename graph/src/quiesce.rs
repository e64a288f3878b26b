//! Quiescing: sources of requests the writer stops before it waits (QEMU: drain,
//! `bdrv_drain_all_begin` / `_end`).

use crate::sync::{Arc, Mutex, lock};

/// A source of requests (for example a device's in-flight counter) that the graph
/// writer quiesces, so that constantly arriving new I/O cannot starve it.
///
/// `begin`/`end` nest: a source quiesced twice is released by the second `end`; the
/// lock always pairs them on the same set of sources, also when sources register or
/// unregister meanwhile. Whoever makes [`is_idle`](Self::is_idle) turn true must call
/// `aioctx_wait::kick()` afterwards, or a `wrlock_drained` waiting for it may sleep on.
pub trait Quiesce: Send + Sync {
    /// Stop accepting new requests (queue them) until the matching `end`.
    fn begin(&self);
    /// Undo one `begin`.
    fn end(&self);
    /// Whether no request is in flight.
    fn is_idle(&self) -> bool;
}

/// The registered sources, each with its registration id.
struct Sources {
    last_id: u64,
    list: Vec<(u64, Arc<dyn Quiesce>)>,
}

/// The registered sources.
pub(crate) struct Quiescers {
    sources: Mutex<Sources>,
}

/// Keeps a source registered; dropping it unregisters the source.
#[must_use = "dropping the registration unregisters the source at once"]
pub struct QuiesceRegistration {
    quiescers: &'static Quiescers,
    id: u64,
}

impl Drop for QuiesceRegistration {
    fn drop(&mut self) {
        lock(&self.quiescers.sources)
            .list
            .retain(|(id, _)| *id != self.id);
    }
}

/// Sources that `begin` was called on; dropping this calls `end` on the same ones.
pub(crate) struct Quiesced(Vec<Arc<dyn Quiesce>>);

impl Quiesced {
    pub(crate) fn all_idle(&self) -> bool {
        self.0.iter().all(|s| s.is_idle())
    }
}

impl Drop for Quiesced {
    fn drop(&mut self) {
        for s in &self.0 {
            s.end();
        }
    }
}

impl Quiescers {
    pub(crate) const fn new() -> Self {
        Self {
            sources: Mutex::new(Sources {
                last_id: 0,
                list: Vec::new(),
            }),
        }
    }

    pub(crate) fn register(&'static self, source: Arc<dyn Quiesce>) -> QuiesceRegistration {
        let mut sources = lock(&self.sources);
        sources.last_id += 1;
        let id = sources.last_id;
        sources.list.push((id, source));
        QuiesceRegistration {
            quiescers: self,
            id,
        }
    }

    /// Calls `begin` on every registered source.
    pub(crate) fn begin(&self) -> Quiesced {
        let sources: Vec<_> = lock(&self.sources)
            .list
            .iter()
            .map(|(_, s)| Arc::clone(s))
            .collect();
        for s in &sources {
            s.begin();
        }
        Quiesced(sources)
    }
}
