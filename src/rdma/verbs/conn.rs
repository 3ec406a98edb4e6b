//! Connection setup with rdma_cm: the active side ([`connect`]) and the passive side
//! ([`VerbsListener`], [`VerbsRequest`]).
//!
//! Active: create an id on a private channel, resolve address and route, create the queue pair,
//! post the initial receives, `rdma_connect` with framed private data, wait for ESTABLISHED
//! (librdmacm moves the queue pair to RTR/RTS and answers the REP on our behalf), then hand the
//! id to the device's monitor.
//!
//! Passive: the listener's channel yields CONNECT_REQUEST events; each request's id moves to a
//! channel of its own right away. `accept` creates the queue pair, posts the receives,
//! `rdma_accept`s (librdmacm moves the queue pair to RTS first) and waits for ESTABLISHED;
//! `reject` sends the reason in the CM reject.
//!
//! Drop order matters everywhere here: an id must be destroyed before the channel it lives on
//! (closing a channel destroys its ids in the kernel), so every function declares the channel
//! before the id or queue pair that uses it.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdma_sys::{
    rdma_accept, rdma_bind_addr, rdma_cm_event_type, rdma_conn_param, rdma_connect, rdma_listen,
    rdma_reject, rdma_resolve_addr, rdma_resolve_route, rdma_set_option,
};

use super::cm::{CmEvent, CmId, EventChannel};
use super::device::Device;
use super::error::{errno, last_os_error};
use super::qp::VerbsQp;
use super::wire;
use super::VerbsFabric;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::{ConnRequest, Listener, QpInit, QueuePair, RecvWr};

/// `rdma_conn_param` value that lets librdmacm use the device's (or the peer's) limit.
const RDMA_MAX_RESP_RES: u8 = 0xFF;
/// As above, for the initiator depth.
const RDMA_MAX_INIT_DEPTH: u8 = 0xFF;
/// `RDMA_OPTION_ID` level of `rdma_set_option`.
const RDMA_OPTION_ID: libc::c_int = 0;
/// `RDMA_OPTION_ID_REUSEADDR` (int).
const RDMA_OPTION_ID_REUSEADDR: libc::c_int = 1;
/// `RDMA_OPTION_ID_ACK_TIMEOUT` (u8).
const RDMA_OPTION_ID_ACK_TIMEOUT: libc::c_int = 3;
/// IB CM reject reason "consumer defined": the peer application called `rdma_reject`.
const IB_CM_REJ_CONSUMER_DEFINED: i32 = 28;
/// How long `accept` waits for the peer's final handshake message.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backlog of pending connection requests per listener.
const LISTEN_BACKLOG: libc::c_int = 128;

fn ms_until(deadline: Instant) -> libc::c_int {
    let left = deadline.saturating_duration_since(Instant::now());
    libc::c_int::try_from(left.as_millis())
        .unwrap_or(libc::c_int::MAX)
        .max(1)
}

/// Waits for an event on `ch` until `deadline`; a timeout becomes [`FabricError::Timeout`].
fn expect_event(ch: &EventChannel, deadline: Instant, timeout: Duration) -> Result<CmEvent> {
    ch.wait_event(deadline)?
        .ok_or(FabricError::Timeout(timeout))
}

fn unexpected(ev: &CmEvent, addr: &str, step: &str) -> FabricError {
    use rdma_cm_event_type::*;
    let status = ev.status();
    let os = std::io::Error::from_raw_os_error(status.abs());
    match ev.kind() {
        RDMA_CM_EVENT_ADDR_ERROR => FabricError::BadAddress {
            addr: addr.to_string(),
            reason: format!("no RDMA device routes to it (rdma_cm address error: {os})"),
        },
        RDMA_CM_EVENT_ROUTE_ERROR | RDMA_CM_EVENT_UNREACHABLE | RDMA_CM_EVENT_CONNECT_ERROR => {
            FabricError::io(format!("{step} {addr}: {}", ev.name()), os)
        }
        RDMA_CM_EVENT_REJECTED => rejected(ev, addr),
        _ => FabricError::Handshake(format!(
            "{step} {addr}: unexpected {} (status {status})",
            ev.name()
        )),
    }
}

fn rejected(ev: &CmEvent, addr: &str) -> FabricError {
    let status = ev.status();
    if let Some(reason) = wire::decode_reject(&ev.private_data()) {
        return FabricError::Rejected(reason);
    }
    if status == IB_CM_REJ_CONSUMER_DEFINED {
        return FabricError::Rejected("rejected by the peer application".into());
    }
    // A reject made by the CM itself: most often nobody listens on that port.
    FabricError::io(
        format!("connect {addr}: rejected by rdma_cm (reason {status}; is anyone listening?)"),
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    )
}

fn conn_param(private: &[u8], rnr_retry: u8) -> rdma_conn_param {
    rdma_conn_param {
        private_data: private.as_ptr().cast(),
        private_data_len: private.len() as u8,
        responder_resources: RDMA_MAX_RESP_RES,
        initiator_depth: RDMA_MAX_INIT_DEPTH,
        flow_control: 1,
        retry_count: wire::RETRY_COUNT,
        rnr_retry_count: rnr_retry,
        srq: 0,
        qp_num: 0,
    }
}

/// Posts the initial receives of a new queue pair.
fn post_initial(qp: &VerbsQp, recvs: &[RecvWr]) -> Result<()> {
    for r in recvs {
        qp.post_recv(r).map_err(|e| match e {
            FabricError::QueueFull => FabricError::Invalid(format!(
                "{} initial receives do not fit the receive queue",
                recvs.len()
            )),
            e => e,
        })?;
    }
    Ok(())
}

/// The active side of connection setup (see the module docs).
pub(crate) fn connect(
    dev: &Arc<Device>,
    addr: &str,
    init: QpInit<'_, VerbsFabric>,
    initial_recvs: &[RecvWr],
    private_data: &[u8],
    timeout: Duration,
) -> Result<(VerbsQp, Vec<u8>)> {
    use rdma_cm_event_type::*;
    let frame = wire::encode_connect(private_data)?;
    let sa = wire::resolve(addr)?;
    let deadline = Instant::now() + timeout;

    let ch = EventChannel::new()?;
    let id = CmId::new(&ch)?;
    let mut dst = wire::RawSockAddr::new(sa);
    // SAFETY: the id is valid; `dst` is a valid sockaddr that the call copies.
    let ret = unsafe {
        rdma_resolve_addr(
            id.as_ptr(),
            std::ptr::null_mut(),
            dst.as_mut_ptr(),
            ms_until(deadline),
        )
    };
    if ret != 0 {
        return Err(errno(&format!("rdma_resolve_addr {addr}")));
    }
    let ev = expect_event(&ch, deadline, timeout)?;
    if ev.kind() != RDMA_CM_EVENT_ADDR_RESOLVED {
        return Err(unexpected(&ev, addr, "resolve"));
    }
    drop(ev);
    if id.verbs() != dev.ctx() {
        return Err(FabricError::BadAddress {
            addr: addr.to_string(),
            reason: other_device(&id, dev, "it is reached through"),
        });
    }
    // SAFETY: the id is valid and its address resolved.
    let ret = unsafe { rdma_resolve_route(id.as_ptr(), ms_until(deadline)) };
    if ret != 0 {
        return Err(errno(&format!("rdma_resolve_route {addr}")));
    }
    let ev = expect_event(&ch, deadline, timeout)?;
    if ev.kind() != RDMA_CM_EVENT_ROUTE_RESOLVED {
        return Err(unexpected(&ev, addr, "resolve route to"));
    }
    drop(ev);
    set_ack_timeout(&id, init.timeouts.response);

    let qp = VerbsQp::create(dev, id, init)?;
    post_initial(&qp, initial_recvs)?;
    let (rnr_retry, _) = wire::rnr_params(init.timeouts.rnr);
    let mut param = conn_param(&frame, rnr_retry);
    // SAFETY: the id has a QP and a resolved route; `param` and the private data it points to
    // live until the call returns (librdmacm copies them).
    let ret = unsafe { rdma_connect(qp.cm_id().as_ptr(), &mut param) };
    if ret != 0 {
        return Err(errno(&format!("rdma_connect {addr}")));
    }
    let ev = expect_event(&ch, deadline, timeout)?;
    if ev.kind() != RDMA_CM_EVENT_ESTABLISHED {
        return Err(unexpected(&ev, addr, "connect"));
    }
    let reply = ev.private_data();
    drop(ev);
    let reply = match wire::decode(&reply) {
        Ok(r) => r.to_vec(),
        Err(why) => {
            // The queue pair drops (and disconnects) on return.
            return Err(FabricError::Handshake(format!("accept from {addr}: {why}")));
        }
    };
    qp.set_rnr_timer(&init.timeouts);
    qp.established()?;
    // The id now lives on the monitor's channel, so `ch` may close.
    drop(ch);
    tracing::debug!(addr, qp_num = qp.qp_num(), "verbs connection established");
    Ok((qp, reply))
}

/// Why a route over another device than the fabric's cannot be used, and what to set instead.
fn other_device(id: &CmId, dev: &Device, what: &str) -> String {
    let other = id.device_name();
    format!(
        "{what} RDMA device {other}, but this fabric's regions and queues live on {} \
         (set {}={other} to use that device)",
        dev.name(),
        crate::env::VERBS_DEVICE
    )
}

fn set_ack_timeout(id: &CmId, response: Duration) {
    let mut t = wire::ack_timeout_exponent(response);
    // SAFETY: the id is valid; the option value is a u8 that the call copies.
    let ret = unsafe {
        rdma_set_option(
            id.as_ptr(),
            RDMA_OPTION_ID,
            RDMA_OPTION_ID_ACK_TIMEOUT,
            (&mut t as *mut u8).cast(),
            std::mem::size_of::<u8>(),
        )
    };
    if ret != 0 {
        tracing::debug!("rdma_set_option(ACK_TIMEOUT={t}): {}", last_os_error());
    }
}

/// Listens for rdma_cm connection requests on one address.
pub struct VerbsListener {
    // The listening id (only kept alive) goes before its channel. Destroyed early when the
    // device is removed: rdma_cm waits for every id of the device to go before it lets go.
    id: Mutex<Option<CmId>>,
    ch: EventChannel,
    local: String,
    dev: Arc<Device>,
}

impl std::fmt::Debug for VerbsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsListener")
            .field("addr", &self.local)
            .finish()
    }
}

impl VerbsListener {
    pub(crate) fn bind(dev: &Arc<Device>, addr: &str) -> Result<VerbsListener> {
        let sa = wire::resolve(addr)?;
        let ch = EventChannel::new()?;
        let id = CmId::new(&ch)?;
        let mut one: libc::c_int = 1;
        // SAFETY: the id is valid; the option value is an int that the call copies.
        let ret = unsafe {
            rdma_set_option(
                id.as_ptr(),
                RDMA_OPTION_ID,
                RDMA_OPTION_ID_REUSEADDR,
                (&mut one as *mut libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>(),
            )
        };
        if ret != 0 {
            tracing::debug!("rdma_set_option(REUSEADDR): {}", last_os_error());
        }
        let mut raw = wire::RawSockAddr::new(sa);
        // SAFETY: the id is valid; `raw` is a valid sockaddr that the call copies.
        let ret = unsafe { rdma_bind_addr(id.as_ptr(), raw.as_mut_ptr()) };
        if ret != 0 {
            let e = last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                FabricError::BadAddress {
                    addr: addr.to_string(),
                    reason: "no RDMA device has this address".into(),
                }
            } else {
                FabricError::io(format!("rdma_bind_addr {addr}"), e)
            });
        }
        if !sa.ip().is_unspecified() && id.verbs() != dev.ctx() {
            return Err(FabricError::BadAddress {
                addr: addr.to_string(),
                reason: other_device(&id, dev, "the address belongs to"),
            });
        }
        // SAFETY: the id is bound.
        let ret = unsafe { rdma_listen(id.as_ptr(), LISTEN_BACKLOG) };
        if ret != 0 {
            return Err(errno(&format!("rdma_listen {addr}")));
        }
        let local = id
            .local_addr()
            .map_or_else(|| addr.to_string(), wire::format_addr);
        tracing::debug!(addr = %local, device = dev.name(), "verbs listener ready");
        Ok(VerbsListener {
            id: Mutex::new(Some(id)),
            ch,
            local,
            dev: Arc::clone(dev),
        })
    }

    /// Turns a CONNECT_REQUEST event into a request, or refuses it (with a logged reason).
    fn take_request(&self, ev: CmEvent) -> Option<VerbsRequest> {
        let raw_id = ev.id();
        let data = ev.private_data();
        drop(ev); // ack before the id may migrate
        let raw_id = NonNull::new(raw_id)?;
        // SAFETY: a CONNECT_REQUEST event's id is a new id that the application owns.
        let id = unsafe { CmId::from_raw(raw_id) };
        let peer = id
            .peer_addr()
            .map_or_else(|| "unknown peer".to_string(), wire::format_addr);
        let refuse = |id: CmId, why: &str| {
            tracing::warn!(listener = %self.local, %peer, "refusing verbs connection: {why}");
            reject_id(&id, why);
        };
        if id.verbs() != self.dev.ctx() {
            let why = other_device(&id, &self.dev, "the request arrived on");
            refuse(id, &why);
            return None;
        }
        let payload = match wire::decode(&data) {
            Ok(p) => p.to_vec(),
            Err(why) => {
                refuse(id, &why);
                return None;
            }
        };
        let ch = match EventChannel::new() {
            Ok(ch) => ch,
            Err(e) => {
                refuse(id, &format!("no event channel: {e}"));
                return None;
            }
        };
        if let Err(e) = id.migrate(&ch) {
            refuse(
                id,
                &format!("cannot move the request off the listener: {e}"),
            );
            return None;
        }
        Some(VerbsRequest {
            id,
            ch,
            data: payload,
            peer,
            dev: Arc::clone(&self.dev),
        })
    }
}

impl Listener<VerbsFabric> for VerbsListener {
    fn local_addr(&self) -> String {
        self.local.clone()
    }

    fn next_request(&self, timeout: Duration) -> Result<Option<VerbsRequest>> {
        use rdma_cm_event_type::*;
        let removed = || FabricError::Unavailable {
            provider: super::error::PROVIDER,
            reason: format!("RDMA device {} was removed", self.dev.name()),
        };
        if self.id.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Err(removed());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let Some(ev) = self.ch.wait_event(deadline)? else {
                return Ok(None);
            };
            match ev.kind() {
                RDMA_CM_EVENT_CONNECT_REQUEST => {
                    if let Some(req) = self.take_request(ev) {
                        return Ok(Some(req));
                    }
                }
                RDMA_CM_EVENT_DEVICE_REMOVAL => {
                    // Acknowledge, then destroy the listening id (rdma_destroy_id waits for
                    // the acknowledgement), so that the removal is not held up by it.
                    drop(ev);
                    drop(self.id.lock().unwrap_or_else(|p| p.into_inner()).take());
                    return Err(removed());
                }
                _ => tracing::debug!(event = %ev.name(), "verbs listener: ignored event"),
            }
        }
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.ch.fd()
    }
}

fn reject_id(id: &CmId, reason: &str) {
    let data = wire::encode_reject(reason);
    // SAFETY: the id is a valid, not yet accepted request id; the data is copied by the call.
    let ret = unsafe { rdma_reject(id.as_ptr(), data.as_ptr().cast(), data.len() as u8) };
    if ret != 0 {
        tracing::debug!("rdma_reject: {}", last_os_error());
    }
}

/// A pending connection request on a [`VerbsListener`].
pub struct VerbsRequest {
    // The id goes before the channel it lives on.
    id: CmId,
    ch: EventChannel,
    data: Vec<u8>,
    peer: String,
    dev: Arc<Device>,
}

impl std::fmt::Debug for VerbsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsRequest")
            .field("peer", &self.peer)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl ConnRequest<VerbsFabric> for VerbsRequest {
    fn private_data(&self) -> &[u8] {
        &self.data
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn accept(
        self,
        init: QpInit<'_, VerbsFabric>,
        initial_recvs: &[RecvWr],
        private_data: &[u8],
    ) -> Result<VerbsQp> {
        use rdma_cm_event_type::*;
        // The channel is bound first, so it is dropped last: on every early return the id (or
        // the queue pair that took it) is destroyed while its channel still exists
        // (rdma_destroy_id reads the channel). A single destructuring `let` would drop `ch`
        // before `id`.
        let ch = self.ch;
        let id = self.id;
        let peer = self.peer;
        let dev = self.dev;
        let frame = match wire::encode_accept(private_data) {
            Ok(f) => f,
            Err(e) => {
                reject_id(&id, "the listener's accept data was too long");
                return Err(e);
            }
        };
        set_ack_timeout(&id, init.timeouts.response);
        // Declared after `ch`, so dropped before it on every path.
        let qp = VerbsQp::create(&dev, id, init)?;
        post_initial(&qp, initial_recvs)?;
        let (rnr_retry, _) = wire::rnr_params(init.timeouts.rnr);
        let mut param = conn_param(&frame, rnr_retry);
        // SAFETY: the id is a request id with a QP; `param` and its data live until the call
        // returns.
        let ret = unsafe { rdma_accept(qp.cm_id().as_ptr(), &mut param) };
        if ret != 0 {
            return Err(errno(&format!("rdma_accept from {peer}")));
        }
        // librdmacm moved the queue pair to RTS: the peer may send now.
        qp.set_rnr_timer(&init.timeouts);
        let deadline = Instant::now() + ACCEPT_TIMEOUT;
        let ev = expect_event(&ch, deadline, ACCEPT_TIMEOUT)?;
        if ev.kind() != RDMA_CM_EVENT_ESTABLISHED {
            return Err(unexpected(&ev, &peer, "accept from"));
        }
        drop(ev);
        qp.established()?;
        drop(ch);
        tracing::debug!(%peer, qp_num = qp.qp_num(), "verbs connection accepted");
        Ok(qp)
    }

    fn reject(self, reason: &str) {
        tracing::debug!(peer = %self.peer, reason, "rejecting verbs connection");
        reject_id(&self.id, reason);
        // Dropping destroys the id, then its channel.
    }
}
