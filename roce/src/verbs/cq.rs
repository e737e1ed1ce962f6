//! Completion queues.
//!
//! A CQ of depth `n` holds at most `n` completions. To make overflow impossible (rxe moves
//! the QPs of an overflowing CQ to the error state), every posted work request *reserves* one
//! entry of the CQ its completion will go to; the entry is given back when the completion is
//! polled, or at once when the request completes without a completion (an unsignaled
//! success) or is dropped (QP reset or destroyed). Posting fails with
//! [`VerbsError::CqFull`] when no entry is left.

use super::types::{CqHandle, VerbsError, WorkCompletion};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// A completion queue.
#[derive(Debug)]
pub struct CompletionQueue {
    depth: usize,
    entries: VecDeque<WorkCompletion>,
    /// Entries reserved by outstanding work requests plus completions not yet polled.
    reserved: usize,
    /// QPs that send completions here.
    users: usize,
}

impl CompletionQueue {
    fn new(depth: usize) -> Self {
        CompletionQueue {
            depth,
            entries: VecDeque::with_capacity(depth.min(1024)),
            reserved: 0,
            users: 0,
        }
    }

    /// The depth given at creation.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Completions waiting to be polled.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no completion waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries not reserved by any work request: how many more requests may be posted to
    /// QPs using this CQ.
    pub fn available(&self) -> usize {
        self.depth - self.reserved
    }

    pub(crate) fn reserve(&mut self, count: usize) -> Result<(), VerbsError> {
        if self.depth - self.reserved < count {
            return Err(VerbsError::CqFull);
        }
        self.reserved += count;
        Ok(())
    }

    pub(crate) fn release(&mut self, count: usize) {
        debug_assert!(self.reserved >= self.entries.len() + count);
        self.reserved = self.reserved.saturating_sub(count);
    }

    /// Queues the completion of a request that reserved an entry.
    pub(crate) fn push(&mut self, completion: WorkCompletion) {
        debug_assert!(self.entries.len() < self.reserved);
        self.entries.push_back(completion);
    }

    fn poll(&mut self, out: &mut [WorkCompletion]) -> usize {
        let count = out.len().min(self.entries.len());
        for (slot, completion) in out.iter_mut().zip(self.entries.drain(..count)) {
            *slot = completion;
        }
        self.reserved -= count;
        count
    }
}

/// The completion queues of a device, by generation-checked handle.
#[derive(Debug)]
pub(crate) struct CqTable {
    slots: Vec<(u16, Option<CompletionQueue>)>,
    free: Vec<usize>,
    live: usize,
    limit: usize,
}

impl CqTable {
    pub(crate) fn new(limit: usize) -> Self {
        CqTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            limit,
        }
    }

    pub(crate) fn create(&mut self, depth: usize) -> Result<CqHandle, VerbsError> {
        if self.live >= self.limit || self.slots.len() > usize::from(u16::MAX) {
            return Err(VerbsError::NoResources);
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push((0, None));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = Some(CompletionQueue::new(depth));
        self.live += 1;
        Ok(CqHandle((u32::from(slot.0) << 16) | index as u32))
    }

    pub(crate) fn destroy(&mut self, handle: CqHandle) -> Result<(), VerbsError> {
        let cq = self.get(handle).ok_or(VerbsError::InvalidHandle)?;
        if cq.users > 0 {
            return Err(VerbsError::Busy);
        }
        let index = (handle.0 & 0xffff) as usize;
        self.slots[index].1 = None;
        self.free.push(index);
        self.live -= 1;
        Ok(())
    }

    pub(crate) fn get(&self, handle: CqHandle) -> Option<&CompletionQueue> {
        let (generation, cq) = self.slots.get((handle.0 & 0xffff) as usize)?;
        if u32::from(*generation) != handle.0 >> 16 {
            return None;
        }
        cq.as_ref()
    }

    pub(crate) fn get_mut(&mut self, handle: CqHandle) -> Option<&mut CompletionQueue> {
        let (generation, cq) = self.slots.get_mut((handle.0 & 0xffff) as usize)?;
        if u32::from(*generation) != handle.0 >> 16 {
            return None;
        }
        cq.as_mut()
    }

    /// Notes that one more (`true`) or one fewer QP uses the CQ.
    pub(crate) fn set_user(&mut self, handle: CqHandle, added: bool) {
        if let Some(cq) = self.get_mut(handle) {
            if added {
                cq.users += 1;
            } else {
                cq.users -= 1;
            }
        }
    }

    pub(crate) fn poll(
        &mut self,
        handle: CqHandle,
        out: &mut [WorkCompletion],
    ) -> Result<usize, VerbsError> {
        Ok(self
            .get_mut(handle)
            .ok_or(VerbsError::InvalidHandle)?
            .poll(out))
    }

    /// Queues a completion for an entry reserved earlier.
    pub(crate) fn complete(&mut self, handle: CqHandle, completion: WorkCompletion) {
        if let Some(cq) = self.get_mut(handle) {
            cq.push(completion);
        }
    }

    /// Gives back `count` reserved entries that will not be used.
    pub(crate) fn release(&mut self, handle: CqHandle, count: usize) {
        if let Some(cq) = self.get_mut(handle) {
            cq.release(count);
        }
    }
}
