//! [`impl_fabric!`]: the one implementation of [`Fabric`](crate::rdma::Fabric) that every
//! provider's handle instantiates. A provider's handle is a clone of a shared domain; each trait
//! method hands that domain and its arguments to the provider's own constructor, so the only
//! thing that differs between providers is which constructor (and which types) they name.

/// Implements [`Fabric`](crate::rdma::Fabric) for a provider handle by delegating every method to
/// the provider's constructors, each called with a reference to the handle's `domain` field
/// followed by the trait method's arguments:
///
/// * `Mr: T = f` — `alloc_mr` calls `f(&domain, len, access)`;
/// * `Cq: T = f` — `create_cq` calls `f(&domain, depth)`;
/// * `Listener: T = f` — `listen` calls `f(&domain, addr)`;
/// * `Qp: T = f` — `connect` calls `f(&domain, addr, init, initial_recvs, private_data,
///   timeout)`.
///
/// `f` is a path or a closure (where a constructor wants something other than the domain).
macro_rules! impl_fabric {
    (
        $fabric:ty {
            provider: $provider:expr,
            domain: $dom:ident,
            Mr: $mr:ty = $alloc_mr:expr,
            Cq: $cq:ty = $create_cq:expr,
            Listener: $listener:ty = $listen:expr,
            Request: $request:ty,
            Qp: $qp:ty = $connect:expr $(,)?
        }
    ) => {
        impl $crate::rdma::Fabric for $fabric {
            type Mr = $mr;
            type Cq = $cq;
            type Qp = $qp;
            type Listener = $listener;
            type Request = $request;

            fn provider(&self) -> $crate::rdma::Provider {
                $provider
            }

            fn alloc_mr(
                &self,
                len: usize,
                access: $crate::rdma::Access,
            ) -> $crate::rdma::Result<$mr> {
                ($alloc_mr)(&self.$dom, len, access)
            }

            fn create_cq(&self, depth: u32) -> $crate::rdma::Result<$cq> {
                ($create_cq)(&self.$dom, depth)
            }

            fn listen(&self, addr: &str) -> $crate::rdma::Result<$listener> {
                ($listen)(&self.$dom, addr)
            }

            fn connect(
                &self,
                addr: &str,
                init: $crate::rdma::QpInit<'_, Self>,
                initial_recvs: &[$crate::rdma::RecvWr],
                private_data: &[u8],
                timeout: ::std::time::Duration,
            ) -> $crate::rdma::Result<($qp, Vec<u8>)> {
                ($connect)(&self.$dom, addr, init, initial_recvs, private_data, timeout)
            }
        }
    };
}

pub(crate) use impl_fabric;
