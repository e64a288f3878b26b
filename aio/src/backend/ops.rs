//! The table of ring operations in flight ([UR7] (`backend/uring.rs`)): fixed slots with
//! generations, so that a `user_data` names one operation and never a later one.
//! The hot methods are `#[inline]`: an `Op` returned through memory by an outlined
//! call costs a store-forwarding stall on every completion (seen in the profiles).

use crate::completion::Callback;
use crate::fd::FdNode;
use crate::sync::Arc;

/// The tag bit of the loop's own operations' `user_data` ([UR7]).
pub(crate) const INTERNAL_TAG: u64 = 1 << 63;
const GEN_BITS: u32 = 31;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// What an in-flight ring operation is.
pub(super) enum Op {
    /// The loop's own read of its notify eventfd ([UR6]).
    NotifyRead,
    /// A one-shot `POLL_ADD` for an fd handler; holds the handler alive ([UR5]).
    Poll(Arc<FdNode>),
    /// A `POLL_REMOVE` or `ASYNC_CANCEL` issued by the loop.
    Control,
    /// A user operation.
    Raw(Callback),
}

impl Op {
    fn tag(&self) -> u64 {
        match self {
            Op::Raw(_) => 0,
            _ => INTERNAL_TAG,
        }
    }
}

pub(super) struct Slot {
    generation: u32,
    pub(super) op: Option<Op>,
}

/// The operations in flight, in fixed slots with generations ([UR7]).
#[derive(Default)]
pub(super) struct OpTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    pub(super) live: usize,
}

impl OpTable {
    /// Stores `op`; returns its `user_data`.
    #[inline]
    pub(super) fn insert(&mut self, op: Op) -> u64 {
        let tag = op.tag();
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 ring operations");
                self.slots.push(Slot {
                    generation: 0,
                    op: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.op.is_none());
        slot.op = Some(op);
        self.live += 1;
        tag | u64::from(slot.generation) << 32 | u64::from(index)
    }

    /// The slot `user_data` names, if it is that operation's (tag and generation match).
    #[inline]
    pub(super) fn find(&mut self, user_data: u64) -> Option<&mut Slot> {
        let index = user_data as u32 as usize;
        let generation = (user_data >> 32) as u32 & GEN_MASK;
        let slot = self.slots.get_mut(index)?;
        match &slot.op {
            Some(op) if slot.generation == generation && op.tag() == user_data & INTERNAL_TAG => {
                Some(slot)
            }
            _ => None,
        }
    }

    /// Takes the operation `user_data` names and frees its slot for reuse under a new
    /// generation; `None` for a stale or unknown `user_data`.
    #[inline]
    pub(super) fn remove(&mut self, user_data: u64) -> Option<Op> {
        self.find(user_data)?;
        Some(self.take_found(user_data))
    }

    /// [`remove`](Self::remove) for a `user_data` that [`find`](Self::find) just
    /// found (no second check).
    #[inline]
    pub(super) fn take_found(&mut self, user_data: u64) -> Op {
        let slot = &mut self.slots[user_data as u32 as usize];
        let op = slot.op.take().expect("`find` found the slot occupied");
        slot.generation = (slot.generation + 1) & GEN_MASK;
        self.free.push(user_data as u32);
        self.live -= 1;
        op
    }

    pub(super) fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub(super) fn user_data(&self) -> impl Iterator<Item = (u64, &Op)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let op = s.op.as_ref()?;
            Some((op.tag() | u64::from(s.generation) << 32 | i as u64, op))
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_freed_slot_is_reused_under_a_new_generation() {
        let mut t = OpTable::default();
        let a = t.insert(Op::Control);
        assert_ne!(a & INTERNAL_TAG, 0);
        assert!(t.remove(a).is_some());
        let b = t.insert(Op::Raw(Callback::Raw(Box::new(|_, _| {}))));
        assert_eq!(a as u32, b as u32, "the slot is reused");
        assert_eq!(b & INTERNAL_TAG, 0);
        assert!(
            t.find(a).is_none(),
            "a stale user_data reaches the new operation"
        );
        assert!(t.remove(a).is_none());
        assert!(t.remove(b | INTERNAL_TAG).is_none(), "the tag is checked");
        assert!(t.remove(b).is_some());
        assert!(t.remove(b).is_none(), "a second final CQE is stale");
        assert!(t.is_empty());
    }
}
