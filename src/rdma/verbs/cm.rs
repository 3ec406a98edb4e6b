//! rdma_cm building blocks: owned event channels, ids and events, and the monitor thread that
//! turns a peer's disconnect into flushed queue pairs.
//!
//! Every channel is non-blocking, so `rdma_get_cm_event` never blocks and all waits go through
//! `poll(2)` with a timeout. Each connection being set up gets a channel of its own (the
//! passive side migrates the new id off the listener's channel as soon as the request arrives),
//! so a thread waiting for one connection's ESTABLISHED never consumes another's events.
//!
//! Once established, ids move to the device-wide [`CmMonitor`] channel. librdmacm does not touch
//! the queue pair when a DISCONNECTED event arrives, so without help a queue pair whose peer
//! died would keep its receives posted forever; the monitor answers DISCONNECTED (and
//! DEVICE_REMOVAL) with `rdma_disconnect`, which moves the queue pair to the error state and
//! flushes everything outstanding, as the contract asks. The same thread reads the device's
//! asynchronous events (see `async_events.rs`).
//!
//! On DEVICE_REMOVAL rdma_cm expects the application to destroy every id and resource of the
//! device. The monitor cannot destroy what queue pairs own while their owners may be posting on
//! them; it flushes each queue pair (its owner sees error completions and `is_connected` false)
//! and the owner's drop destroys the id. A listener returns [`FabricError::Unavailable`] from
//! `next_request`, so its owner drops it too.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

use rdma_sys::{
    rdma_ack_cm_event, rdma_cm_event, rdma_cm_event_type, rdma_cm_id, rdma_create_event_channel,
    rdma_create_id, rdma_destroy_event_channel, rdma_destroy_id, rdma_destroy_qp,
    rdma_event_channel, rdma_event_str, rdma_get_cm_event, rdma_migrate_id, rdma_port_space,
};

use super::async_events::{self, QpRegistry};
use super::error::{errno, last_os_error, means_no_device, no_device};
use super::qp::QpTable;
use super::wire;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::notify::{new_eventfd, wait_readable};

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: RawFd, what: &str) -> Result<()> {
    // SAFETY: fcntl on a descriptor we own; the result is checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(errno(what));
    }
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if ret < 0 {
        return Err(errno(what));
    }
    Ok(())
}

/// An owned, non-blocking rdma_cm event channel.
pub(crate) struct EventChannel {
    ch: NonNull<rdma_event_channel>,
}

// SAFETY: an event channel is a file descriptor wrapped in a heap struct; librdmacm calls on it
// are thread-safe and the struct is never mutated from Rust.
unsafe impl Send for EventChannel {}
// SAFETY: as above.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    /// Creates a channel. On a machine without RDMA support this fails with
    /// [`FabricError::Unavailable`] (librdmacm reports ENODEV).
    pub fn new() -> Result<EventChannel> {
        // librdmacm opens the devices here: fork support must be on before that.
        super::device::fork_safety()?;
        // SAFETY: no arguments; returns NULL or a channel we own.
        let ch = unsafe { rdma_create_event_channel() };
        let Some(ch) = NonNull::new(ch) else {
            let e = last_os_error();
            return Err(if means_no_device(&e) {
                no_device("rdma_create_event_channel", e)
            } else {
                FabricError::io("rdma_create_event_channel", e)
            });
        };
        let ch = EventChannel { ch };
        set_nonblocking(ch.fd(), "rdma event channel O_NONBLOCK")?;
        Ok(ch)
    }

    /// The raw channel for librdmacm calls.
    pub fn as_ptr(&self) -> *mut rdma_event_channel {
        self.ch.as_ptr()
    }

    /// The channel's descriptor (readable when an event is pending).
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is valid while `self` lives; `fd` is a plain field.
        unsafe { (*self.ch.as_ptr()).fd }
    }

    /// Takes the next event without blocking; `Ok(None)` when none is pending.
    pub fn try_event(&self) -> Result<Option<CmEvent>> {
        let mut ev: *mut rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is valid and non-blocking; `ev` is a valid out-pointer.
        let ret = unsafe { rdma_get_cm_event(self.ch.as_ptr(), &mut ev) };
        if ret == 0 {
            return Ok(NonNull::new(ev).map(|ev| CmEvent { ev }));
        }
        let e = last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(FabricError::io("rdma_get_cm_event", e)),
        }
    }

    /// Waits for the next event until `deadline`; `Ok(None)` when it passes.
    pub fn wait_event(&self, deadline: Instant) -> Result<Option<CmEvent>> {
        loop {
            if let Some(ev) = self.try_event()? {
                return Ok(Some(ev));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(self.fd(), left)? {
                // One last look: the event may have raced the timeout.
                return self.try_event();
            }
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: the channel was created in `new` and is destroyed once; every id on it has
        // been destroyed or migrated away by its owner (see the drop orders in conn.rs).
        unsafe { rdma_destroy_event_channel(self.ch.as_ptr()) }
    }
}

/// An owned `rdma_cm_id`. Dropping it destroys its queue pair (if any) and the id.
pub(crate) struct CmId {
    id: NonNull<rdma_cm_id>,
}

// SAFETY: a cm id is used by one owner at a time (it is not Sync); librdmacm allows using it
// from any thread.
unsafe impl Send for CmId {}

impl CmId {
    /// Creates an RC (`RDMA_PS_TCP`) id whose events go to `ch`.
    pub fn new(ch: &EventChannel) -> Result<CmId> {
        let mut id: *mut rdma_cm_id = ptr::null_mut();
        // SAFETY: `ch` is a valid channel and `id` a valid out-pointer.
        let ret = unsafe {
            rdma_create_id(
                ch.as_ptr(),
                &mut id,
                ptr::null_mut(),
                rdma_port_space::RDMA_PS_TCP,
            )
        };
        if ret != 0 {
            let e = last_os_error();
            return Err(if means_no_device(&e) {
                no_device("rdma_create_id", e)
            } else {
                FabricError::io("rdma_create_id", e)
            });
        }
        NonNull::new(id)
            .map(|id| CmId { id })
            .ok_or_else(|| FabricError::Invalid("rdma_create_id returned no id".into()))
    }

    /// Takes ownership of an id that rdma_cm created (a connection request's).
    ///
    /// # Safety
    ///
    /// `id` must be a valid id that nothing else destroys.
    pub unsafe fn from_raw(id: NonNull<rdma_cm_id>) -> CmId {
        CmId { id }
    }

    /// The raw id for librdmacm calls.
    pub fn as_ptr(&self) -> *mut rdma_cm_id {
        self.id.as_ptr()
    }

    /// The device context the id is bound to (NULL before address resolution or for a
    /// wildcard listener).
    pub fn verbs(&self) -> *mut rdma_sys::ibv_context {
        // SAFETY: the id is valid while `self` lives; `verbs` is a plain field set by librdmacm
        // during calls we make on this thread.
        unsafe { (*self.id.as_ptr()).verbs }
    }

    /// The local address (after bind or resolution).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        // SAFETY: the id is valid; the route address is plain data inside it, written by
        // librdmacm during our own calls. The union member read is the storage view, which
        // covers every family.
        let s = unsafe { &(*self.id.as_ptr()).route.addr.src_addr_union.src_storage };
        wire::from_storage(s)
    }

    /// The peer's address (for passive ids and after resolution).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        // SAFETY: as in `local_addr`, for the destination.
        let s = unsafe { &(*self.id.as_ptr()).route.addr.dst_addr_union.dst_storage };
        wire::from_storage(s)
    }

    /// The device context of the route, as an error-message-friendly device name.
    pub fn device_name(&self) -> String {
        super::device::ctx_device_name(self.verbs())
    }

    /// Moves the id's future events to `ch`. The caller must have acknowledged every event of
    /// this id already (librdmacm waits for that).
    pub fn migrate(&self, ch: &EventChannel) -> Result<()> {
        // SAFETY: both are valid; events of this id were acked by our callers.
        let ret = unsafe { rdma_migrate_id(self.id.as_ptr(), ch.as_ptr()) };
        if ret != 0 {
            return Err(errno("rdma_migrate_id"));
        }
        Ok(())
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        let id = self.id.as_ptr();
        // SAFETY: the id is valid and owned by us; if it has a QP, the QP was created with
        // rdma_create_qp on it and is destroyed exactly here. rdma_destroy_id waits until the
        // events reported for the id were acknowledged (the monitor acks right after handling).
        unsafe {
            if !(*id).qp.is_null() {
                rdma_destroy_qp(id);
            }
            if rdma_destroy_id(id) != 0 {
                tracing::warn!("rdma_destroy_id: {}", last_os_error());
            }
        }
    }
}

/// The device rdma_cm binds `ip` (a local address of an RDMA interface) to, as its context's
/// address and its name; `None` when no device has it. Takes the device from a throwaway id, like
/// every connection does (the name is read while the id holds the device).
pub(crate) fn device_of_local_addr(ip: std::net::IpAddr) -> Option<(usize, String)> {
    let ch = EventChannel::new().ok()?;
    let id = CmId::new(&ch).ok()?;
    let mut raw = wire::RawSockAddr::new(std::net::SocketAddr::new(ip, 0));
    // SAFETY: the id is valid; `raw` is a valid sockaddr that the call copies.
    if unsafe { rdma_sys::rdma_bind_addr(id.as_ptr(), raw.as_mut_ptr()) } != 0 {
        return None;
    }
    let ctx = id.verbs();
    // The id drops before its channel (declared after it).
    (!ctx.is_null()).then(|| (ctx as usize, id.device_name()))
}

/// An event taken from a channel; acknowledged when dropped.
pub(crate) struct CmEvent {
    ev: NonNull<rdma_cm_event>,
}

impl CmEvent {
    fn raw(&self) -> &rdma_cm_event {
        // SAFETY: the event stays valid until it is acked in Drop.
        unsafe { self.ev.as_ref() }
    }

    /// The event type (`RDMA_CM_EVENT_*`).
    pub fn kind(&self) -> rdma_cm_event_type::Type {
        self.raw().event
    }

    /// The event's name, for messages.
    pub fn name(&self) -> String {
        // SAFETY: rdma_event_str returns a static NUL-terminated string for any value.
        unsafe { std::ffi::CStr::from_ptr(rdma_event_str(self.kind())) }
            .to_string_lossy()
            .into_owned()
    }

    /// The event's status (0, a negative errno, or a CM reject reason).
    pub fn status(&self) -> i32 {
        self.raw().status
    }

    /// The id the event is about.
    pub fn id(&self) -> *mut rdma_cm_id {
        self.raw().id
    }

    /// A copy of the connection private data (connect request, established, rejected).
    pub fn private_data(&self) -> Vec<u8> {
        // SAFETY: for connection events librdmacm fills the `conn` member; the data pointer
        // points into the event (valid until the ack) and holds `private_data_len` bytes.
        unsafe {
            let conn = &self.raw().param.conn;
            if conn.private_data.is_null() || conn.private_data_len == 0 {
                return Vec::new();
            }
            std::slice::from_raw_parts(
                conn.private_data.cast::<u8>(),
                usize::from(conn.private_data_len),
            )
            .to_vec()
        }
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
        // SAFETY: the event came from rdma_get_cm_event and is acked exactly once.
        unsafe { rdma_ack_cm_event(self.ev.as_ptr()) };
    }
}

/// The thread that watches established connections of one device for DISCONNECTED and
/// DEVICE_REMOVAL, and flushes their queue pairs.
///
/// An id handed to the monitor carries a pointer to its [`QpTable`] in `id->context`. The
/// pointer stays valid while the monitor handles an event of the id: the queue pair owns an
/// `Arc<QpTable>` that it drops only after `rdma_destroy_id`, which does not return before the
/// monitor acknowledged every event of the id.
pub(crate) struct CmMonitor {
    ch: EventChannel,
    wake: OwnedFd,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct ChannelPtr(*mut rdma_event_channel);
// SAFETY: the channel outlives the thread (CmMonitor::drop joins before the channel drops) and
// librdmacm channel calls are thread-safe.
unsafe impl Send for ChannelPtr {}

struct ContextPtr(*mut rdma_sys::ibv_context);
// SAFETY: the device context outlives the thread (Device::drop drops the monitor, which joins,
// before it releases the context); libibverbs async-event calls are thread-safe.
unsafe impl Send for ContextPtr {}

impl CmMonitor {
    /// Creates the monitor's channel and starts its thread, which also reads the asynchronous
    /// events of `ctx` (a context that outlives the monitor) for the queue pairs in `qps`.
    pub fn start(ctx: NonNull<rdma_sys::ibv_context>) -> Result<CmMonitor> {
        let ch = EventChannel::new()?;
        let wake = new_eventfd()?;
        // SAFETY: the context is open.
        let asyncfd = unsafe { async_events::async_fd(ctx.as_ptr()) };
        set_nonblocking(asyncfd, "verbs async event fd O_NONBLOCK")?;
        let chp = ChannelPtr(ch.as_ptr());
        let ctxp = ContextPtr(ctx.as_ptr());
        let fds = [ch.fd(), wake.as_raw_fd(), asyncfd];
        let thread = std::thread::Builder::new()
            .name("rfaas-verbs-cm".into())
            .spawn(move || monitor_loop(chp, ctxp, fds))
            .map_err(|e| FabricError::io("spawn verbs cm monitor", e))?;
        Ok(CmMonitor {
            ch,
            wake,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands an established connection to the monitor: `table` is reachable from its events.
    ///
    /// # Safety
    ///
    /// `table` must stay alive until `id` is destroyed (the queue pair guarantees it by
    /// destroying the id before it drops its `Arc<QpTable>`), and every event of `id` must have
    /// been acknowledged.
    pub unsafe fn adopt(&self, id: &CmId, table: *const QpTable) -> Result<()> {
        // SAFETY: the id is valid and not yet on the monitor's channel, so no other thread reads
        // `context`; the migrate system call that follows orders the write before any event the
        // monitor takes for this id.
        unsafe { (*id.as_ptr()).context = table.cast_mut().cast() };
        id.migrate(&self.ch)
    }
}

impl Drop for CmMonitor {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // `ch` drops after this: no id is left on it (each holds the Device alive).
    }
}

fn monitor_loop(ch: ChannelPtr, ctx: ContextPtr, [chfd, wakefd, asyncfd]: [RawFd; 3]) {
    let ch = ch.0;
    let ctx = ctx.0;
    loop {
        let mut fds = [chfd, wakefd, asyncfd].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is a valid array of three pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if r < 0 {
            let e = last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("verbs cm monitor: poll: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[2].revents != 0 {
            // SAFETY: the context outlives this thread (see ContextPtr) and its async fd is
            // non-blocking (set in `start`).
            unsafe { async_events::drain(ctx, QpRegistry::global()) };
        }
        loop {
            let mut ev: *mut rdma_cm_event = ptr::null_mut();
            // SAFETY: the channel is valid (see ChannelPtr) and non-blocking.
            let ret = unsafe { rdma_get_cm_event(ch, &mut ev) };
            if ret != 0 || ev.is_null() {
                let e = last_os_error();
                if ret != 0 && !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                    // Do not spin on a broken channel.
                    tracing::warn!("verbs cm monitor: rdma_get_cm_event: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                break;
            }
            let ev = CmEvent {
                ev: NonNull::new(ev).expect("checked non-null"),
            };
            handle_monitor_event(&ev);
            drop(ev); // ack: lets a concurrent rdma_destroy_id of this id return
        }
    }
}

fn handle_monitor_event(ev: &CmEvent) {
    use rdma_cm_event_type::*;
    let kind = ev.kind();
    match kind {
        RDMA_CM_EVENT_DISCONNECTED | RDMA_CM_EVENT_DEVICE_REMOVAL => {
            let id = ev.id();
            // SAFETY: the event's id is valid until the event is acked.
            let ctx = unsafe { (*id).context } as *const QpTable;
            if ctx.is_null() {
                return;
            }
            // SAFETY: `context` was set by `adopt` to a table that outlives the id (see there).
            let table = unsafe { &*ctx };
            tracing::debug!(qp_token = table.token(), event = %ev.name(), "peer disconnected");
            // SAFETY: `id` is valid until the ack, and `on_disconnect` only calls
            // rdma_disconnect while the queue pair is alive (under the table's teardown lock).
            unsafe { table.on_disconnect(id) };
        }
        _ => tracing::trace!(event = %ev.name(), "verbs cm monitor: ignored event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_channel_without_rdma_is_unavailable() {
        // Here (no RDMA kernel support) librdmacm reports ENODEV; with a device this works.
        match EventChannel::new() {
            Ok(ch) => assert!(ch.fd() >= 0),
            Err(FabricError::Unavailable { reason, .. }) => {
                assert!(
                    reason.starts_with("no RDMA device found (rdma_create_event_channel"),
                    "{reason}"
                )
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}
