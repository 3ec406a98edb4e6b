//! [`Registration`]: what a provider's memory region knows about itself (where its bytes are,
//! its keys and rights), and [`impl_memory_region!`], the one implementation of
//! [`MemoryRegion`](crate::rdma::MemoryRegion)'s accessors over it.

use super::types::Access;

/// Where a registered region's bytes are, how peers and local requests name them, and what it
/// was registered for. A provider's region keeps one and implements
/// [`MemoryRegion`](crate::rdma::MemoryRegion) with [`impl_memory_region!`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Registration {
    /// First byte.
    pub(crate) ptr: *mut u8,
    /// Length in bytes.
    pub(crate) len: usize,
    /// Local key (for SGEs).
    pub(crate) lkey: u32,
    /// Remote key (for peers).
    pub(crate) rkey: u32,
    /// Access rights it was registered with.
    pub(crate) access: Access,
}

/// Implements [`MemoryRegion`](crate::rdma::MemoryRegion) for a provider's region type whose
/// field `$field` is a [`Registration`]; the tokens after it (method definitions) override the
/// trait's provided methods, e.g. a provider whose remote addresses are not virtual addresses
/// defines `remote` there.
macro_rules! impl_memory_region {
    ($mr:ty, $field:ident $(, $($overrides:tt)*)?) => {
        impl $crate::rdma::MemoryRegion for $mr {
            fn as_ptr(&self) -> *mut u8 {
                self.$field.ptr
            }
            fn len(&self) -> usize {
                self.$field.len
            }
            fn lkey(&self) -> u32 {
                self.$field.lkey
            }
            fn rkey(&self) -> u32 {
                self.$field.rkey
            }
            fn access(&self) -> $crate::rdma::Access {
                self.$field.access
            }
            $($($overrides)*)?
        }
    };
}

pub(crate) use impl_memory_region;
