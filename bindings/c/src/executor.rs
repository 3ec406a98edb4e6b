//! An allocation behind one type whatever the cluster's provider: the client library's
//! `Executor<F>` with its fabric erased, as the C handle `rfaas_executor` holds it (the client
//! library's [`AnyExecutor`]), and [`AllocateAny`], which makes one.

pub use rfaas_core::client::{AllocateAny, AnyExecutor};
