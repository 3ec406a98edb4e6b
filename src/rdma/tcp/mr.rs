//! Memory regions of the tcp provider.

use std::sync::Arc;

use super::domain::{Domain, Region};
use crate::rdma::types::Access;
use crate::rdma::MemoryRegion;

/// A registered memory region of the tcp provider: private, page-aligned, pre-faulted memory
/// that peers reach through the target's progress (never mapped by another process).
///
/// Dropping it deregisters the key at once; the memory itself is freed when the last access
/// in flight that pinned it finishes (see the lifetime rule in `domain.rs`).
#[derive(Debug)]
pub struct TcpMr {
    pub(crate) region: Arc<Region>,
    dom: Arc<Domain>,
}

impl TcpMr {
    pub(crate) fn new(dom: Arc<Domain>, len: usize, access: Access) -> crate::rdma::Result<TcpMr> {
        let region = dom.register(len, access)?;
        Ok(TcpMr { region, dom })
    }
}

impl MemoryRegion for TcpMr {
    fn as_ptr(&self) -> *mut u8 {
        self.region.ptr()
    }
    fn len(&self) -> usize {
        self.region.len()
    }
    fn lkey(&self) -> u32 {
        self.region.key
    }
    fn rkey(&self) -> u32 {
        self.region.key
    }
    fn access(&self) -> Access {
        self.region.access
    }
}

impl Drop for TcpMr {
    fn drop(&mut self) {
        self.dom.deregister(&self.region);
    }
}
