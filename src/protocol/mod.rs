//! The invocation protocol (data plane), as pure encoding and state machines with no I/O.
//!
//! An invocation is ONE write-with-immediate of `[header | payload]` into a free input slot of a
//! worker; the result is ONE write-with-immediate of the output into the caller's region. See
//! [`invocation`] for the wire format, [`slots`] for the client's credit and id bookkeeping, and
//! [`polling`] for the executor's hot/warm schedule, [`worker_qp`] for the sizes of a worker
//! connection's queue pair.

pub mod invocation;
pub mod polling;
pub mod slots;
pub mod worker_qp;

pub use invocation::{
    InvocationHeader, ProtocolError, RequestImm, ResultImm, Status, HEADER_LEN, MAX_SLOTS,
};
pub use polling::{PollMode, PollSchedule};
pub use slots::{Completion, SlotTable};
