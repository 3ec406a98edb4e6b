//! The device's asynchronous events (`ibv_get_async_event`), read by the connection monitor's
//! thread next to the rdma_cm events.
//!
//! | event | what the provider does |
//! |---|---|
//! | `COMM_EST` | `rdma_notify` on the queue pair's id: data arrived before the CM's final handshake message, and rdma_cm needs the hint to report ESTABLISHED (otherwise `accept` waits for a message that may have been lost) |
//! | `QP_FATAL`, `QP_REQ_ERR`, `QP_ACCESS_ERR` | the queue pair is in the error state: `is_connected` turns false (its requests flush) |
//! | `DEVICE_FATAL` | every queue pair of the device is marked failed |
//! | `PORT_ERR` | logged: connections over the port fail through their transport timers, the flush follows |
//! | others | logged at debug level |
//!
//! Fabrics opened on the same device share rdma_cm's device context, so the monitors of all of
//! them read the same event descriptor and any one may take an event: the registry of queue
//! pairs is therefore one per process, keyed by context and queue pair number.
//!
//! Every event is acknowledged right after it is handled: `ibv_destroy_qp` waits for the
//! acknowledgement of the events of its queue pair, which is what keeps the queue pair (and its
//! id) valid while an event about it is handled.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};

use rdma_sys::{
    ibv_ack_async_event, ibv_async_event, ibv_context, ibv_event_type, ibv_get_async_event, ibv_qp,
    rdma_cm_id, rdma_notify,
};

use super::error::last_os_error;
use super::qp::QpTable;

/// A queue pair as the monitor knows it.
pub(crate) struct QpEntry {
    /// Its table (connection state).
    pub table: Arc<QpTable>,
    /// Its rdma_cm id, valid while an event of the queue pair is unacknowledged.
    pub id: *mut rdma_cm_id,
}

// SAFETY: `id` is only passed to `rdma_notify` while an event of its queue pair is held (see the
// module docs), which keeps it valid; librdmacm calls are thread-safe.
unsafe impl Send for QpEntry {}

/// A queue pair's key: its device context (as an address) and its number.
type QpKey = (usize, u32);

/// The process's queue pairs by device context and number. Queue pairs enter when created and
/// leave before their id is destroyed.
#[derive(Default)]
pub(crate) struct QpRegistry {
    qps: Mutex<HashMap<QpKey, QpEntry>>,
}

impl QpRegistry {
    /// The registry of this process.
    pub fn global() -> &'static QpRegistry {
        static REGISTRY: OnceLock<QpRegistry> = OnceLock::new();
        REGISTRY.get_or_init(QpRegistry::default)
    }

    /// Adds queue pair `qp_num` of device context `ctx`.
    pub fn insert(&self, ctx: *mut ibv_context, qp_num: u32, entry: QpEntry) {
        self.lock().insert((ctx as usize, qp_num), entry);
    }

    /// Removes queue pair `qp_num` of device context `ctx`.
    pub fn remove(&self, ctx: *mut ibv_context, qp_num: u32) {
        self.lock().remove(&(ctx as usize, qp_num));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<QpKey, QpEntry>> {
        self.qps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an asynchronous event asks of the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Tell rdma_cm that the connection is established (`COMM_EST`).
    NotifyEstablished,
    /// The queue pair is in the error state.
    FailQp,
    /// The whole device failed.
    FailDevice,
    /// A port went down.
    PortDown,
    /// Nothing beyond a log line.
    Ignore,
}

/// The action for a raw `ibv_event_type` value.
pub(crate) fn action(event_type: u32) -> Action {
    use ibv_event_type::*;
    match event_type {
        t if t == IBV_EVENT_COMM_EST as u32 => Action::NotifyEstablished,
        t if t == IBV_EVENT_QP_FATAL as u32
            || t == IBV_EVENT_QP_REQ_ERR as u32
            || t == IBV_EVENT_QP_ACCESS_ERR as u32 =>
        {
            Action::FailQp
        }
        t if t == IBV_EVENT_DEVICE_FATAL as u32 => Action::FailDevice,
        t if t == IBV_EVENT_PORT_ERR as u32 => Action::PortDown,
        _ => Action::Ignore,
    }
}

/// Whether events of this type name a queue pair in their `element`.
fn names_qp(event_type: u32) -> bool {
    use ibv_event_type::*;
    [
        IBV_EVENT_QP_FATAL,
        IBV_EVENT_QP_REQ_ERR,
        IBV_EVENT_QP_ACCESS_ERR,
        IBV_EVENT_COMM_EST,
        IBV_EVENT_SQ_DRAINED,
        IBV_EVENT_PATH_MIG,
        IBV_EVENT_PATH_MIG_ERR,
        IBV_EVENT_QP_LAST_WQE_REACHED,
    ]
    .iter()
    .any(|&t| t as u32 == event_type)
}

/// `struct ibv_async_event` with the event type as a plain integer: rdma-sys declares it as a
/// Rust enum, and a value the enum does not list (a newer kernel's event) must not become one.
#[repr(C)]
pub(crate) struct RawAsyncEvent {
    element: Element,
    event_type: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
union Element {
    ptr: *mut libc::c_void,
    port_num: libc::c_int,
}

/// Handles every pending asynchronous event of `ctx` (whose async fd is non-blocking).
///
/// # Safety
///
/// `ctx` must be an open device context whose async fd was made non-blocking.
pub(crate) unsafe fn drain(ctx: *mut ibv_context, qps: &QpRegistry) {
    loop {
        let mut ev = RawAsyncEvent {
            element: Element {
                ptr: std::ptr::null_mut(),
            },
            event_type: 0,
        };
        // SAFETY: the context is open (caller); `ev` has the layout of `ibv_async_event` (checked
        // in the tests) and the call fills it in.
        let ret = unsafe { ibv_get_async_event(ctx, (&mut ev as *mut RawAsyncEvent).cast()) };
        if ret != 0 {
            let e = last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                tracing::warn!("verbs: ibv_get_async_event: {e}");
            }
            return;
        }
        handle(ctx, &ev, qps);
        // SAFETY: the event came from ibv_get_async_event and is acknowledged once.
        unsafe { ibv_ack_async_event((&mut ev as *mut RawAsyncEvent).cast::<ibv_async_event>()) };
    }
}

fn handle(ctx: *mut ibv_context, ev: &RawAsyncEvent, qps: &QpRegistry) {
    let kind = ev.event_type;
    let qp_num = if names_qp(kind) {
        // SAFETY: for queue-pair events the element is the queue pair, valid until the event is
        // acknowledged (ibv_destroy_qp waits for that); `qp_num` is a plain field.
        unsafe {
            let qp = ev.element.ptr.cast::<ibv_qp>();
            (!qp.is_null()).then(|| (*qp).qp_num)
        }
    } else {
        None
    };
    let registry = qps.lock();
    let entry = qp_num.and_then(|n| registry.get(&(ctx as usize, n)));
    match action(kind) {
        Action::NotifyEstablished => {
            if let Some(e) = entry {
                // SAFETY: the id of a queue pair whose event we hold is valid (module docs).
                let ret = unsafe { rdma_notify(e.id, ibv_event_type::IBV_EVENT_COMM_EST) };
                if ret != 0 {
                    tracing::debug!(?qp_num, "rdma_notify(COMM_EST): {}", last_os_error());
                }
            }
        }
        Action::FailQp => {
            tracing::warn!(
                ?qp_num,
                event = kind,
                "verbs queue pair entered the error state"
            );
            if let Some(e) = entry {
                e.table.mark_failed();
            }
        }
        Action::FailDevice => {
            tracing::error!("verbs device reported a fatal error: every connection fails");
            for (_, e) in registry.iter().filter(|((c, _), _)| *c == ctx as usize) {
                e.table.mark_failed();
            }
        }
        Action::PortDown => {
            // SAFETY: for port events the element is the port number.
            let port = unsafe { ev.element.port_num };
            tracing::warn!(
                port,
                "verbs port went down: its connections fail when their transport timers run out"
            );
        }
        Action::Ignore => tracing::debug!(?qp_num, event = kind, "verbs async event"),
    }
}

/// The descriptor of `ctx`'s asynchronous events.
///
/// # Safety
///
/// `ctx` must be an open device context.
pub(crate) unsafe fn async_fd(ctx: *mut ibv_context) -> RawFd {
    // SAFETY: the context is open (caller); `async_fd` is a plain field.
    unsafe { (*ctx).async_fd }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn raw_event_has_the_c_layout() {
        assert_eq!(size_of::<RawAsyncEvent>(), size_of::<ibv_async_event>());
        assert_eq!(
            offset_of!(RawAsyncEvent, event_type),
            offset_of!(ibv_async_event, event_type)
        );
        assert_eq!(offset_of!(RawAsyncEvent, element), 0);
    }

    #[test]
    fn events_map_to_actions() {
        use ibv_event_type::*;
        assert_eq!(action(IBV_EVENT_COMM_EST as u32), Action::NotifyEstablished);
        for t in [
            IBV_EVENT_QP_FATAL,
            IBV_EVENT_QP_REQ_ERR,
            IBV_EVENT_QP_ACCESS_ERR,
        ] {
            assert_eq!(action(t as u32), Action::FailQp, "{t:?}");
            assert!(names_qp(t as u32));
        }
        assert_eq!(action(IBV_EVENT_DEVICE_FATAL as u32), Action::FailDevice);
        assert_eq!(action(IBV_EVENT_PORT_ERR as u32), Action::PortDown);
        assert_eq!(action(IBV_EVENT_PORT_ACTIVE as u32), Action::Ignore);
        // A value no version of the enum lists yet is ignored, not misread.
        assert_eq!(action(1000), Action::Ignore);
        assert!(!names_qp(IBV_EVENT_PORT_ERR as u32) && !names_qp(IBV_EVENT_CQ_ERR as u32));
        assert!(!names_qp(1000));
    }
}
