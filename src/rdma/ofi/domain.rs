//! One libfabric domain: fabric, domain, one reliable-datagram endpoint, its address vector and
//! completion queue, the table of registered regions and the table of queue pairs; and the
//! progress engine that reads the libfabric completion queue and turns its entries into the
//! contract's completions on the right [`super::cq::CqShared`].
//!
//! Every call on the endpoint, the address vector and the completion queue is made under
//! `inner` (the domain is opened with `FI_THREAD_DOMAIN`), so the provider needs no locks of its
//! own. Lock order: `inner`, then a queue pair's `state`; never the reverse.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use super::qp::{QpShared, Window};
use super::sys;
use super::wire::{self, MsgHdr, HDR_LEN, MAX_SEND};
use crate::rdma::error::{FabricError, Result};
use crate::rdma::segment::PrivateMem;
use crate::rdma::types::{Access, Wc, WcOpcode, WcStatus};

/// Transmit contexts (requests in flight per domain).
pub(crate) const TX_SLOTS: usize = 256;
/// Internal receive buffers for two-sided messages.
pub(crate) const RX_BUFS: usize = 64;
/// Size of one internal message buffer.
pub(crate) const BUF: usize = HDR_LEN + MAX_SEND;
/// How long a post waits for room in the transmit queue before it reports `QueueFull`.
const POST_WAIT: Duration = Duration::from_secs(5);
/// How often the progress thread drives progress when nothing else does.
const PROGRESS_TICK_MS: i32 = 1;
/// Every how many ticks the progress thread fails requests past their deadline (the
/// response timeouts are seconds; this keeps the domain lock off the hot loop's path).
const EXPIRE_EVERY: u32 = 10;

/// The API version rfaas asks for: the oldest it supports (Debian 12).
pub(crate) const API_VERSION: u32 = (1 << 16) | 17;

/// What the libfabric provider in use offers (shown by `rfaas status` and benchmark metadata).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OfiInfo {
    /// libfabric provider, e.g. `shm`, `tcp;ofi_rxm`, `cxi`.
    pub provider: String,
    /// Fabric name.
    pub fabric: String,
    /// Domain name.
    pub domain: String,
    /// Version of the libfabric library loaded, `major.minor`.
    pub libfabric_version: String,
    /// Memory-registration mode bits in force, by name.
    pub mr_mode: Vec<&'static str>,
    /// Whether the provider offers `FI_ATOMIC` (fetch-add and compare-swap on 8-byte words).
    pub atomics: bool,
    /// Whether data progress is manual (someone must call into libfabric for work to move).
    pub manual_progress: bool,
    /// Bytes of remote CQ data.
    pub cq_data_size: usize,
    /// How a blocked waiter sleeps: `"fd"` on the completion queue's wait object
    /// (`FI_WAIT_FD` + `fi_trywait`), `"spin-then-sleep"` where the provider has none.
    pub wait_object: &'static str,
}

/// A one-element RMA message: the local bytes of `iov` (descriptor `desc`) and the remote
/// range `rma` at address-vector entry `peer`, with `context` and remote CQ data `data`. The
/// message points at its arguments, which must outlive the libfabric call it is passed to.
pub(crate) fn rma_msg(
    iov: &libc::iovec,
    desc: &mut *mut c_void,
    peer: u64,
    rma: &sys::fi_rma_iov,
    context: *mut c_void,
    data: u64,
) -> sys::fi_msg_rma {
    sys::fi_msg_rma {
        msg_iov: (iov as *const libc::iovec).cast(),
        desc,
        iov_count: 1,
        addr: peer,
        rma_iov: rma,
        rma_iov_count: 1,
        context,
        data,
    }
}

/// Turns a negative libfabric return value into an error.
pub(crate) fn fi_error(context: &str, ret: isize) -> FabricError {
    if let Err(e) = sys::libfabric() {
        return FabricError::io(context.to_string(), std::io::Error::other(e));
    }
    let code = (-ret) as i32;
    // SAFETY: fi_strerror returns a pointer to a static string for any code.
    let msg = unsafe { CStr::from_ptr(sys::fi_strerror(code)) }
        .to_string_lossy()
        .into_owned();
    FabricError::io(
        context.to_string(),
        std::io::Error::other(format!("{msg} (libfabric error {code})")),
    )
}

/// A registered region, as the domain sees it (for local SGE checks and descriptors).
#[derive(Clone, Copy)]
pub(crate) struct MrEntry {
    pub addr: u64,
    pub len: u64,
    pub access: Access,
    pub desc: *mut c_void,
}
// SAFETY: `desc` is an opaque provider handle that is only passed back to libfabric calls,
// which are serialised by the domain lock.
unsafe impl Send for MrEntry {}
// SAFETY: as above.
unsafe impl Sync for MrEntry {}

/// Bookkeeping of one transmit context.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub busy: bool,
    pub qp: u32,
    pub wr_id: u64,
    pub opcode: WcOpcode,
    pub len: u32,
    pub signaled: bool,
    /// An internal message (credit grant): never reported to the user.
    pub internal: bool,
    /// Already reported as flushed; libfabric's completion is dropped when it comes.
    pub flushed: bool,
    /// When the request fails if libfabric has not completed it (the queue pair's response
    /// timeout): libfabric 1.17's shm never reports a write the target refused.
    pub deadline: Option<Instant>,
    /// A delivery-complete write: its success proves this range for later writes.
    pub proves: Option<Window>,
}

impl Slot {
    const FREE: Slot = Slot {
        busy: false,
        qp: 0,
        wr_id: 0,
        opcode: WcOpcode::Send,
        len: 0,
        signaled: false,
        internal: false,
        flushed: false,
        deadline: None,
        proves: None,
    };
}

/// State guarded by the domain lock.
pub(crate) struct Inner {
    pub slots: Vec<Slot>,
    free: Vec<u32>,
    peers: HashMap<Vec<u8>, u64>,
}

pub(crate) struct Handles {
    pub(crate) info: *mut sys::fi_info,
    pub(crate) fabric: *mut sys::fid_fabric,
    pub(crate) domain: *mut sys::fid_domain,
    pub(crate) ep: *mut sys::fid_ep,
    pub(crate) av: *mut sys::fid_av,
    pub(crate) cq: *mut sys::fid_cq,
    pub(crate) bounce_mr: *mut sys::fid_mr,
    /// The completion queue's wait object as a descriptor (`FI_WAIT_FD`), where the provider
    /// has one; owned by the completion queue.
    pub(crate) wait_fd: Option<RawFd>,
}

impl Handles {
    /// No handles (closing it closes nothing).
    const EMPTY: Handles = Handles {
        info: std::ptr::null_mut(),
        fabric: std::ptr::null_mut(),
        domain: std::ptr::null_mut(),
        ep: std::ptr::null_mut(),
        av: std::ptr::null_mut(),
        cq: std::ptr::null_mut(),
        bounce_mr: std::ptr::null_mut(),
        wait_fd: None,
    };

    /// Closes every handle now (endpoint first), leaving `self` empty: for owners whose
    /// registered memory must outlive the endpoint but not the value.
    pub(crate) fn close_now(&mut self) {
        drop(std::mem::replace(self, Handles::EMPTY));
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        // SAFETY: each handle was opened by `Domain::open` (or is null) and is closed once, in
        // dependency order: registrations and the endpoint before what they are bound to.
        unsafe {
            for fid in [
                self.bounce_mr.cast::<sys::fid>(),
                self.ep.cast(),
                self.av.cast(),
                self.cq.cast(),
                self.domain.cast(),
                self.fabric.cast(),
            ] {
                if !fid.is_null() {
                    sys::rfaas_fi_close(fid);
                }
            }
            if !self.info.is_null() {
                sys::fi_freeinfo(self.info);
            }
        }
    }
}

/// A libfabric domain and everything rfaas keeps beside it.
pub(crate) struct Domain {
    h: Handles,
    pub(crate) info: OfiInfo,
    pub(crate) mr_mode: u32,
    pub(crate) name: Vec<u8>,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) mrs: RwLock<Vec<Option<MrEntry>>>,
    pub(crate) qps: RwLock<HashMap<u32, Arc<QpShared>>>,
    pub(crate) grants_due: SegQueue<u32>,
    next_qp: AtomicU32,
    next_key: AtomicU64,
    /// Whether the provider reports the length of a remote write with data at the target
    /// (found out at open by a write to our own endpoint); when it does not, every
    /// write-with-immediate is a write followed by a `MSG_WRITE_IMM` message.
    pub(crate) len_reported: bool,
    probe_len: AtomicU64,
    /// How many times the completion queue was drained (by anyone): the progress thread
    /// stands aside while this moves between its ticks.
    drains: AtomicU64,
    ctx: Box<[UnsafeCell<sys::fi_context2>]>,
    bounce: PrivateMem,
    bounce_desc: *mut c_void,
    pub(crate) epoll: OwnedFd,
    stop: AtomicBool,
    stop_efd: OwnedFd,
    progress: Mutex<Option<std::thread::JoinHandle<()>>>,
}

// SAFETY: the raw handles are only used under `inner` (or, for the bounce buffers, by the one
// holder of a transmit slot / the dispatcher under `inner`); the context array is handed to
// libfabric by address and only read back under `inner`.
unsafe impl Send for Domain {}
// SAFETY: as above.
unsafe impl Sync for Domain {}

fn mr_mode_names(m: u32) -> Vec<&'static str> {
    [
        (sys::FI_MR_LOCAL, "FI_MR_LOCAL"),
        (sys::FI_MR_RAW, "FI_MR_RAW"),
        (sys::FI_MR_VIRT_ADDR, "FI_MR_VIRT_ADDR"),
        (sys::FI_MR_ALLOCATED, "FI_MR_ALLOCATED"),
        (sys::FI_MR_PROV_KEY, "FI_MR_PROV_KEY"),
        (sys::FI_MR_ENDPOINT, "FI_MR_ENDPOINT"),
        (sys::FI_MR_HMEM, "FI_MR_HMEM"),
    ]
    .into_iter()
    .filter(|(b, _)| m & b != 0)
    .map(|(_, n)| n)
    .collect()
}

fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libfabric strings in fi_info are NUL-terminated and live as long as the info.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Asks `fi_getinfo` for an RDM endpoint of `provider` with the capabilities rfaas needs.
/// Returns the info (owned) or the libfabric error code.
pub(crate) fn getinfo(
    provider: Option<&str>,
    atomics: bool,
) -> std::result::Result<*mut sys::fi_info, isize> {
    if sys::libfabric().is_err() {
        return Err(-(sys::FI_ENOSYS as isize)); // fi_error says why
    }
    // SAFETY: fi_allocinfo returns a zeroed fi_info with its attribute structs allocated (or
    // null); every pointer is checked before use, strings are malloc'ed as fi_freeinfo expects.
    unsafe {
        let hints = sys::fi_allocinfo();
        if hints.is_null() {
            return Err(-(sys::FI_ENOMEM as isize));
        }
        let mut caps = (sys::FI_MSG
            | sys::FI_RMA
            | sys::FI_READ
            | sys::FI_WRITE
            | sys::FI_SEND
            | sys::FI_RECV
            | sys::FI_REMOTE_READ
            | sys::FI_REMOTE_WRITE) as u64;
        if atomics {
            caps |= u64::from(sys::FI_ATOMIC);
        }
        (*hints).caps = caps;
        (*hints).mode = sys::FI_CONTEXT | sys::FI_CONTEXT2;
        (*(*hints).ep_attr).type_ = sys::fi_ep_type_FI_EP_RDM;
        (*(*hints).domain_attr).mr_mode = (sys::FI_MR_LOCAL
            | sys::FI_MR_VIRT_ADDR
            | sys::FI_MR_ALLOCATED
            | sys::FI_MR_PROV_KEY
            | sys::FI_MR_ENDPOINT) as i32;
        (*(*hints).domain_attr).threading = sys::fi_threading_FI_THREAD_DOMAIN;
        // Per-peer ordering the contract builds on: a write is visible before a later
        // write-with-data or send, and a read sees earlier writes.
        (*(*hints).tx_attr).msg_order =
            u64::from(sys::FI_ORDER_RAW | sys::FI_ORDER_WAW | sys::FI_ORDER_SAW);
        if let Some(p) = provider {
            let c = CString::new(p).unwrap_or_default();
            (*(*hints).fabric_attr).prov_name = libc::strdup(c.as_ptr());
        }
        let mut info = std::ptr::null_mut();
        let r = sys::fi_getinfo(
            API_VERSION,
            std::ptr::null(),
            std::ptr::null(),
            0,
            hints,
            &mut info,
        );
        sys::fi_freeinfo(hints);
        if r != 0 || info.is_null() {
            return Err(if r == 0 {
                -(sys::FI_ENODATA as isize)
            } else {
                r as isize
            });
        }
        Ok(info)
    }
}

impl Domain {
    /// Opens a domain of the libfabric provider `provider` (`None`: whichever libfabric ranks
    /// first among those that offer what rfaas needs).
    pub(crate) fn open(provider: Option<&str>) -> Result<Arc<Domain>> {
        let shown = provider.unwrap_or("(any)").to_string();
        let unavailable = |reason: String| FabricError::Unavailable {
            provider: "ofi",
            reason,
        };
        let (info, want_atomics) = match getinfo(provider, true) {
            Ok(i) => (i, true),
            Err(_) => match getinfo(provider, false) {
                Ok(i) => (i, false),
                Err(e) => {
                    return Err(unavailable(format!(
                        "libfabric {} has no provider {shown:?} with reliable-datagram \
                         endpoints (FI_EP_RDM), RMA and messages ({}); `fi_info -l` lists the \
                         providers, `fi_info -p NAME` what each offers; set RFAAS_OFI_PROVIDER",
                        libfabric_version(),
                        fi_error("fi_getinfo", e)
                    )))
                }
            },
        };
        let h = open_handles(info, true)?;
        // SAFETY: `info` is a valid fi_info list head returned by fi_getinfo; its attribute
        // pointers are non-null for a returned info.
        let (prov_name, fabric_name, domain_name, mr_mode, cq_data_size, manual) = unsafe {
            let fa = &*(*info).fabric_attr;
            let da = &*(*info).domain_attr;
            (
                cstr(fa.prov_name),
                cstr(fa.name),
                cstr(da.name),
                da.mr_mode as u32,
                da.cq_data_size,
                da.data_progress == sys::fi_progress_FI_PROGRESS_MANUAL,
            )
        };
        if cq_data_size < 8 {
            return Err(unavailable(format!(
                "libfabric provider {prov_name:?} carries {cq_data_size} bytes of remote CQ \
                 data; the ofi provider needs 8 (32-bit immediate plus queue pair and credits)"
            )));
        }
        if mr_mode & sys::FI_MR_RAW != 0 {
            return Err(unavailable(format!(
                "libfabric provider {prov_name:?} needs FI_MR_RAW keys, which rfaas's 32-bit \
                 rkeys cannot carry"
            )));
        }
        let mut name = vec![0u8; wire::MAX_NAME];
        let mut len = name.len();
        // SAFETY: `name` has `len` writable bytes; `len` is updated to the name's size.
        let r = unsafe { sys::rfaas_fi_getname(h.ep, name.as_mut_ptr().cast(), &mut len) };
        if r != 0 {
            return Err(fi_error("fi_getname", r as isize));
        }
        name.truncate(len);
        let mut atomics = want_atomics;
        if atomics {
            let mut n = 0usize;
            // SAFETY: queries on an enabled endpoint with a valid out pointer.
            let ok = unsafe {
                sys::rfaas_fi_fetch_atomicvalid(
                    h.ep,
                    sys::fi_datatype_FI_UINT64,
                    sys::fi_op_FI_SUM,
                    &mut n,
                ) == 0
                    && sys::rfaas_fi_compare_atomicvalid(
                        h.ep,
                        sys::fi_datatype_FI_UINT64,
                        sys::fi_op_FI_CSWAP,
                        &mut n,
                    ) == 0
            };
            atomics = ok;
        }
        // Internal message buffers: TX_SLOTS transmit buffers, then RX_BUFS receive buffers.
        let bytes = (TX_SLOTS + RX_BUFS) * BUF;
        let bounce = PrivateMem::new(bytes)?;
        let mut ctx = Vec::with_capacity(TX_SLOTS + RX_BUFS);
        ctx.resize_with(TX_SLOTS + RX_BUFS, || {
            UnsafeCell::new(sys::fi_context2::default())
        });
        let (epfd, efd) = (epoll_create()?, crate::rdma::notify::new_eventfd()?);
        epoll_add(epfd.as_raw_fd(), efd.as_raw_fd(), u64::MAX)?;
        let info_out = OfiInfo {
            provider: prov_name,
            fabric: fabric_name,
            domain: domain_name,
            libfabric_version: libfabric_version(),
            mr_mode: mr_mode_names(mr_mode),
            atomics,
            manual_progress: manual,
            cq_data_size,
            wait_object: if h.wait_fd.is_some() {
                "fd"
            } else {
                "spin-then-sleep"
            },
        };
        let mut d = Domain {
            h,
            info: info_out,
            mr_mode,
            name,
            inner: Mutex::new(Inner {
                slots: vec![Slot::FREE; TX_SLOTS],
                free: (0..TX_SLOTS as u32).rev().collect(),
                peers: HashMap::new(),
            }),
            mrs: RwLock::new(Vec::new()),
            qps: RwLock::new(HashMap::new()),
            grants_due: SegQueue::new(),
            next_qp: AtomicU32::new(1),
            next_key: AtomicU64::new(1),
            len_reported: false,
            probe_len: AtomicU64::new(u64::MAX),
            drains: AtomicU64::new(0),
            ctx: ctx.into_boxed_slice(),
            bounce,
            bounce_desc: std::ptr::null_mut(),
            epoll: epfd,
            stop: AtomicBool::new(false),
            stop_efd: efd,
            progress: Mutex::new(None),
        };
        let all_local = (sys::FI_SEND | sys::FI_RECV | sys::FI_READ | sys::FI_WRITE) as u64;
        let (mr, desc, _key) = d.register(d.bounce.as_ptr(), bytes, all_local)?;
        d.h.bounce_mr = mr;
        d.bounce_desc = desc;
        {
            let mut g = d.inner.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..RX_BUFS {
                d.post_rx(&mut g, i)?;
            }
        }
        d.len_reported = d.probe_len_reporting();
        let d = Arc::new(d);
        let weak = Arc::downgrade(&d);
        let epfd = d
            .epoll
            .try_clone()
            .map_err(|e| FabricError::io("dup epoll fd", e))?;
        let t = std::thread::Builder::new()
            .name("rfaas-ofi-progress".into())
            .spawn(move || progress_thread(weak, epfd))
            .map_err(|e| FabricError::io("spawn ofi progress thread", e))?;
        *d.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        tracing::debug!(provider = %d.info.provider, fabric = %d.info.fabric,
            mr_mode = ?d.info.mr_mode, atomics = d.info.atomics, "ofi domain open");
        Ok(d)
    }

    /// Writes 8 bytes with remote CQ data to our own endpoint and reports whether the target
    /// side's completion carries the length (shm does; libfabric 1.17's tcp;ofi_rxm does not).
    fn probe_len_reporting(&self) -> bool {
        let probe = || -> Result<bool> {
            let mem = PrivateMem::new(4096)?;
            let p = mem.as_ptr();
            let access = (sys::FI_REMOTE_WRITE | sys::FI_WRITE | sys::FI_READ) as u64;
            let reg = self.register(p, mem.len(), access);
            let ok = (|| -> Result<bool> {
                let (_mr, _desc, key) = *reg
                    .as_ref()
                    .map_err(|e| FabricError::Invalid(e.to_string()))?;
                let me = self.peer_addr(&self.name)?;
                let mut g = self.lock();
                let slot = self.take_slot(
                    &mut g,
                    Slot {
                        internal: true,
                        ..Slot::FREE
                    },
                )?;
                let iov = libc::iovec {
                    iov_base: self.buf(slot).cast(),
                    iov_len: 8,
                };
                let rma = sys::fi_rma_iov {
                    addr: if self.virt_addr() { p as u64 } else { 0 },
                    len: 8,
                    key,
                };
                let mut desc = self.bounce_desc;
                let data = wire::CqData {
                    dst_qp: 0,
                    imm: 0,
                    solicited: false,
                    credits: 0,
                    len: None,
                }
                .pack();
                self.post(&mut g, slot, "fi_writemsg (probe)", |ep, ctx| {
                    let msg = rma_msg(&iov, &mut desc, me, &rma, ctx, data);
                    // SAFETY: `msg` and its buffers live across the call; the target region
                    // stays registered until the probe ends.
                    unsafe {
                        sys::rfaas_fi_writemsg(
                            ep,
                            &msg,
                            u64::from(sys::FI_COMPLETION | sys::FI_REMOTE_CQ_DATA),
                        )
                    }
                })?;
                let deadline = Instant::now() + Duration::from_secs(1);
                while self.probe_len.load(Ordering::SeqCst) == u64::MAX && Instant::now() < deadline
                {
                    self.drain_cq(&mut g);
                }
                // Let the initiator's completion come back before the region goes away.
                let until = Instant::now() + Duration::from_millis(100);
                while g.slots[slot].busy && Instant::now() < until {
                    self.drain_cq(&mut g);
                }
                Ok(self.probe_len.load(Ordering::SeqCst) == 8)
            })();
            if let Ok((mr, _, _)) = reg {
                self.deregister(mr);
            }
            drop(mem);
            ok
        };
        let r = probe();
        tracing::debug!(provider = %self.info.provider, result = ?r, "ofi: remote write length probe");
        r.unwrap_or(false)
    }

    /// Registers `len` bytes at `ptr` with libfabric access flags `access`; binds and enables
    /// the registration where the provider asks for `FI_MR_ENDPOINT`. Returns the handle, its
    /// descriptor and its remote key.
    pub(crate) fn register(
        &self,
        ptr: *mut u8,
        len: usize,
        access: u64,
    ) -> Result<(*mut sys::fid_mr, *mut c_void, u64)> {
        let requested = if self.mr_mode & sys::FI_MR_PROV_KEY != 0 {
            0
        } else {
            self.next_key.fetch_add(1, Ordering::Relaxed)
        };
        let _g = self.lock();
        let mut mr = std::ptr::null_mut();
        // SAFETY: `ptr..ptr+len` is memory this domain mapped and keeps mapped until the
        // registration is closed; the domain lock serialises the call.
        unsafe {
            let r =
                sys::rfaas_fi_mr_reg(self.h.domain, ptr.cast(), len, access, requested, &mut mr);
            if r != 0 {
                return Err(fi_error("fi_mr_reg", r as isize));
            }
            if self.mr_mode & sys::FI_MR_ENDPOINT != 0 {
                let r = sys::rfaas_fi_mr_bind_ep(mr, self.h.ep);
                let r = if r == 0 {
                    sys::rfaas_fi_mr_enable(mr)
                } else {
                    r
                };
                if r != 0 {
                    sys::rfaas_fi_close(mr.cast());
                    return Err(fi_error(
                        "fi_mr_bind/fi_mr_enable (FI_MR_ENDPOINT)",
                        r as isize,
                    ));
                }
            }
            Ok((mr, sys::rfaas_fi_mr_desc(mr), sys::rfaas_fi_mr_key(mr)))
        }
    }

    /// Closes a registration made by [`Domain::register`].
    pub(crate) fn deregister(&self, mr: *mut sys::fid_mr) {
        let _g = self.lock();
        // SAFETY: `mr` came from `register` and is closed once, under the domain lock.
        unsafe {
            sys::rfaas_fi_close(mr.cast());
        }
    }

    /// The completion queue's wait object, where the provider has one.
    pub(crate) fn wait_fd(&self) -> Option<RawFd> {
        self.h.wait_fd
    }

    /// Whether a waiter may now block on [`Domain::wait_fd`] (`fi_trywait` succeeded: nothing
    /// is pending that the descriptor would not announce). When libfabric says work is pending,
    /// drives progress and returns false: the caller checks its queue and asks again.
    pub(crate) fn ready_to_block(&self) -> bool {
        let mut g = self.lock();
        // SAFETY: the fabric and completion queue are open for the domain's life; the domain
        // lock serialises the call with every other call on the completion queue.
        let r = unsafe { sys::rfaas_fi_trywait_cq(self.h.fabric, self.h.cq) };
        if r == 0 {
            return true;
        }
        if r != -(sys::FI_EAGAIN as i32) {
            tracing::debug!("ofi: fi_trywait: {}", fi_error("fi_trywait", r as isize));
        }
        self.drain_cq(&mut g);
        false
    }

    /// The domain lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether remote addresses are virtual addresses (else offsets into the region).
    pub(crate) fn virt_addr(&self) -> bool {
        self.mr_mode & sys::FI_MR_VIRT_ADDR != 0
    }

    /// The address libfabric wants for a remote address handed out by `OfiMr::remote`.
    #[inline]
    pub(crate) fn remote_addr(&self, addr: u64) -> u64 {
        if self.virt_addr() {
            addr
        } else {
            addr.wrapping_sub(super::OFFSET_BIAS)
        }
    }

    /// A fresh queue pair number not in use.
    /// Fails when all [`wire::MAX_QP_NUM`] numbers are taken (a queue pair per peer is far
    /// fewer than that).
    pub(crate) fn alloc_qp_num(&self) -> Result<u32> {
        let qps = self.qps.read().unwrap_or_else(|e| e.into_inner());
        for _ in 0..wire::MAX_QP_NUM {
            let n = self.next_qp.fetch_add(1, Ordering::Relaxed) % wire::MAX_QP_NUM + 1;
            if !qps.contains_key(&n) {
                return Ok(n);
            }
        }
        Err(FabricError::Invalid(format!(
            "the ofi domain has {} queue pairs open, the most its CQ data can address",
            wire::MAX_QP_NUM
        )))
    }

    /// The address-vector entry of a peer endpoint name (inserted once).
    pub(crate) fn peer_addr(&self, name: &[u8]) -> Result<u64> {
        let mut g = self.lock();
        if let Some(&a) = g.peers.get(name) {
            return Ok(a);
        }
        let mut a: u64 = 0;
        // SAFETY: `name` is a readable byte string; fi_av_insert reads one address from it.
        // Providers validate the bytes; a malformed name yields an error (or count 0).
        let r = unsafe { sys::rfaas_fi_av_insert(self.h.av, name.as_ptr().cast(), &mut a) };
        if r != 1 {
            return Err(FabricError::BadAddress {
                addr: hex::encode(&name[..name.len().min(64)]),
                reason: format!(
                    "not an endpoint address of libfabric provider {:?} ({})",
                    self.info.provider,
                    if r < 0 {
                        fi_error("fi_av_insert", r as isize).to_string()
                    } else {
                        "rejected".into()
                    }
                ),
            });
        }
        g.peers.insert(name.to_vec(), a);
        Ok(a)
    }

    /// The MR entry of `lkey`.
    pub(crate) fn mr_entry(&self, lkey: u32) -> Option<MrEntry> {
        let t = self.mrs.read().unwrap_or_else(|e| e.into_inner());
        t.get(lkey as usize).copied().flatten()
    }

    /// Address of transmit/receive buffer `i` (transmit slots first).
    pub(crate) fn buf(&self, i: usize) -> *mut u8 {
        // SAFETY: `i < TX_SLOTS + RX_BUFS`, inside the bounce mapping.
        unsafe { self.bounce.as_ptr().add(i * BUF) }
    }

    fn ctx_ptr(&self, i: usize) -> *mut c_void {
        self.ctx[i].get().cast()
    }

    fn ctx_index(&self, p: *mut c_void) -> Option<usize> {
        let base = self.ctx.as_ptr() as usize;
        let off = (p as usize).checked_sub(base)?;
        let sz = std::mem::size_of::<UnsafeCell<sys::fi_context2>>();
        (off % sz == 0 && off / sz < self.ctx.len()).then_some(off / sz)
    }

    /// Posts internal receive buffer `i`.
    fn post_rx(&self, _g: &mut Inner, i: usize) -> Result<()> {
        let idx = TX_SLOTS + i;
        loop {
            // SAFETY: the buffer and its context belong to this domain and are not in use.
            let r = unsafe {
                sys::rfaas_fi_recv(
                    self.h.ep,
                    self.buf(idx).cast(),
                    BUF,
                    self.bounce_desc,
                    self.ctx_ptr(idx),
                )
            };
            if r == 0 {
                return Ok(());
            }
            if r != -(sys::FI_EAGAIN as isize) {
                return Err(fi_error("fi_recv", r));
            }
            self.drain_cq(_g);
        }
    }

    /// Takes a free transmit slot, driving progress while none is free (bounded).
    pub(crate) fn take_slot(&self, g: &mut Inner, slot: Slot) -> Result<usize> {
        // The clock is read only once the queue is full, not on every post.
        let mut deadline = None;
        loop {
            if let Some(i) = g.free.pop() {
                g.slots[i as usize] = Slot { busy: true, ..slot };
                return Ok(i as usize);
            }
            let now = Instant::now();
            if now >= *deadline.get_or_insert(now + POST_WAIT) {
                return Err(FabricError::QueueFull);
            }
            self.drain_cq(g);
        }
    }

    fn free_slot(g: &mut Inner, i: usize) {
        g.slots[i] = Slot::FREE;
        g.free.push(i as u32);
    }

    /// Runs one libfabric post (`f` gets the slot's context pointer), retrying on `FI_EAGAIN`
    /// while driving progress, for at most [`POST_WAIT`]. Frees the slot on failure.
    pub(crate) fn post(
        &self,
        g: &mut Inner,
        slot: usize,
        what: &str,
        mut f: impl FnMut(*mut sys::fid_ep, *mut c_void) -> isize,
    ) -> Result<()> {
        let mut deadline = None;
        loop {
            let r = f(self.h.ep, self.ctx_ptr(slot));
            if r == 0 {
                return Ok(());
            }
            let now = Instant::now();
            if r != -(sys::FI_EAGAIN as isize) || now >= *deadline.get_or_insert(now + POST_WAIT) {
                Self::free_slot(g, slot);
                return Err(if r == -(sys::FI_EAGAIN as isize) {
                    FabricError::QueueFull
                } else {
                    fi_error(what, r)
                });
            }
            self.drain_cq(g);
        }
    }

    /// The descriptor of the internal buffers.
    pub(crate) fn bounce_desc(&self) -> *mut c_void {
        self.bounce_desc
    }

    /// Sends an internal message (header + `payload`) to `peer` from transmit slot `slot`.
    pub(crate) fn send_msg(
        &self,
        g: &mut Inner,
        slot: usize,
        peer: u64,
        hdr: &MsgHdr,
        payload_len: usize,
    ) -> Result<()> {
        let buf = self.buf(slot);
        let h = hdr.encode();
        // SAFETY: the slot's buffer is BUF bytes, owned by the slot's holder.
        unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), buf, HDR_LEN) };
        let iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: HDR_LEN + payload_len,
        };
        let mut desc = self.bounce_desc;
        self.post(g, slot, "fi_sendmsg", |ep, ctx| {
            let msg = sys::fi_msg {
                msg_iov: (&iov as *const libc::iovec).cast(),
                desc: &mut desc,
                iov_count: 1,
                addr: peer,
                context: ctx,
                data: 0,
            };
            // SAFETY: `msg` and what it points to live across the call; the buffer stays
            // reserved by the slot until its completion.
            unsafe { sys::rfaas_fi_sendmsg(ep, &msg, u64::from(sys::FI_COMPLETION)) }
        })
    }

    /// Sends credit grants that are due (called with the domain lock held).
    fn send_due_grants(&self, g: &mut Inner) {
        while let Some(q) = self.grants_due.pop() {
            let qp = self
                .qps
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&q)
                .cloned();
            let Some(qp) = qp else { continue };
            let n = qp.take_grant();
            if n == 0 {
                continue;
            }
            let hdr = MsgHdr {
                kind: wire::MSG_GRANT,
                flags: 0,
                dst_qp: qp.peer_qp,
                imm: 0,
                credits: n,
                len: 0,
            };
            let slot = Slot {
                qp: qp.num,
                internal: true,
                ..Slot::FREE
            };
            let r = self
                .take_slot(g, slot)
                .and_then(|s| self.send_msg(g, s, qp.peer, &hdr, 0));
            if let Err(e) = r {
                tracing::debug!(qp = qp.num, "ofi credit grant not sent: {e}");
            }
        }
    }

    /// Drives progress if no one else is: reads the completion queue and dispatches.
    pub(crate) fn progress(&self) {
        if let Ok(mut g) = self.inner.try_lock() {
            self.drain_cq(&mut g);
        }
    }

    /// Reads every available entry of the libfabric completion queue and dispatches it; then
    /// sends due credit grants.
    pub(crate) fn drain_cq(&self, g: &mut Inner) {
        // Under the domain lock: a plain increment, no read-modify-write needed.
        self.drains
            .store(self.drains.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let mut e = [sys::fi_cq_data_entry::default(); 16];
        loop {
            // SAFETY: `e` has room for 16 entries of the configured format (FI_CQ_FORMAT_DATA).
            let n = unsafe { sys::rfaas_fi_cq_read(self.h.cq, e.as_mut_ptr(), e.len()) };
            if n > 0 {
                for ent in &e[..n as usize] {
                    self.dispatch(g, ent);
                }
                // A short batch emptied the queue: reading it again would only run the
                // provider's progress once more (on `tcp;ofi_rxm` a poll and the read that
                // resets its signal descriptor, two system calls per completion).
                if (n as usize) < e.len() {
                    break;
                }
                continue;
            }
            if n == -(sys::FI_EAVAIL as isize) {
                let mut err = sys::fi_cq_err_entry::default();
                // SAFETY: `err` is a zeroed error entry (err_data_size 0: no provider data).
                let r = unsafe { sys::rfaas_fi_cq_readerr(self.h.cq, &mut err) };
                if r > 0 {
                    self.dispatch_err(g, &err);
                    continue;
                }
            } else if n != -(sys::FI_EAGAIN as isize) {
                tracing::warn!("ofi: fi_cq_read: {}", fi_error("fi_cq_read", n));
            }
            break;
        }
        if !self.grants_due.is_empty() {
            self.send_due_grants(g);
        }
    }

    fn dispatch(&self, g: &mut Inner, e: &sys::fi_cq_data_entry) {
        if e.flags & u64::from(sys::FI_REMOTE_CQ_DATA) != 0
            && e.flags & u64::from(sys::FI_RECV) == 0
        {
            // A write with data landed here.
            let c = wire::CqData::unpack(e.data);
            if c.dst_qp == 0 {
                // The length probe of `Domain::open` (queue pair numbers start at 1).
                self.probe_len.store(e.len as u64, Ordering::SeqCst);
                return;
            }
            if let Some(qp) = self.qp(c.dst_qp) {
                let len = c.len.unwrap_or(e.len as u32);
                qp.arrived(self, c.imm, len, c.solicited, c.credits, None);
            }
            return;
        }
        let Some(i) = self.ctx_index(e.op_context) else {
            tracing::debug!(flags = e.flags, "ofi: completion without a known context");
            return;
        };
        if i >= TX_SLOTS {
            // An internal message arrived.
            let buf = self.buf(i);
            let len = e.len.min(BUF);
            // SAFETY: the receive buffer holds `len` valid bytes until it is reposted below.
            let bytes = unsafe { std::slice::from_raw_parts(buf, len) };
            match MsgHdr::decode(bytes) {
                Some(h) => {
                    if let Some(qp) = self.qp(h.dst_qp) {
                        match h.kind {
                            wire::MSG_GRANT => qp.granted(h.credits),
                            wire::MSG_WRITE_IMM => qp.arrived(
                                self,
                                h.imm,
                                h.len,
                                h.flags & wire::FLAG_SOLICITED != 0,
                                h.credits,
                                None,
                            ),
                            wire::MSG_SEND => qp.arrived(
                                self,
                                h.imm,
                                (len - HDR_LEN) as u32,
                                h.flags & wire::FLAG_SOLICITED != 0,
                                h.credits,
                                Some((&bytes[HDR_LEN..], h.flags & wire::FLAG_IMM != 0)),
                            ),
                            k => tracing::warn!(kind = k, "ofi: unknown internal message"),
                        }
                    }
                }
                None => tracing::warn!(len, "ofi: runt internal message"),
            }
            if let Err(e) = self.post_rx(g, i - TX_SLOTS) {
                tracing::warn!("ofi: reposting a receive buffer: {e}");
            }
            return;
        }
        let s = g.slots[i];
        Self::free_slot(g, i);
        if let (true, false, Some(w)) = (s.busy, s.flushed, s.proves) {
            if let Some(qp) = self.qp(s.qp) {
                qp.prove(w);
            }
        }
        if !s.busy || s.flushed || s.internal || !s.signaled {
            return;
        }
        if let Some(qp) = self.qp(s.qp) {
            qp.send_cq.push(
                Wc {
                    wr_id: s.wr_id,
                    status: WcStatus::Success,
                    opcode: s.opcode,
                    byte_len: s.len,
                    imm: None,
                    qp_num: s.qp,
                },
                false,
            );
        }
    }

    fn dispatch_err(&self, g: &mut Inner, e: &sys::fi_cq_err_entry) {
        let Some(i) = self.ctx_index(e.op_context) else {
            tracing::debug!(err = e.err, "ofi: error completion at the target side");
            return;
        };
        if i >= TX_SLOTS {
            if e.err != sys::FI_ECANCELED as i32 {
                tracing::warn!(err = e.err, "ofi: internal receive failed");
                let _ = self.post_rx(g, i - TX_SLOTS);
            }
            return;
        }
        let s = g.slots[i];
        Self::free_slot(g, i);
        if !s.busy || s.flushed {
            return;
        }
        let status = map_err(e.err, e.prov_errno);
        // SAFETY: the CQ is open; fi_cq_strerror returns a static or provider-owned string.
        let why = cstr(unsafe { sys::rfaas_fi_cq_strerror(self.h.cq, e.prov_errno, e.err_data) });
        tracing::debug!(qp = s.qp, err = e.err, prov_errno = e.prov_errno, %why, ?status, "ofi request failed");
        let Some(qp) = self.qp(s.qp) else { return };
        // Error state first, so a request posted after the user sees this completion flushes.
        qp.fail(self, g);
        if !s.internal {
            qp.send_cq.push(
                Wc {
                    wr_id: s.wr_id,
                    status,
                    opcode: s.opcode,
                    byte_len: 0,
                    imm: None,
                    qp_num: s.qp,
                },
                true,
            );
        }
    }

    /// Fails requests that libfabric has not completed within their deadline: the request
    /// completes with `RetryExceeded` and its queue pair moves to the error state.
    pub(crate) fn expire_slots(&self) {
        let now = Instant::now();
        let mut g = self.lock();
        let mut expired = Vec::new();
        for s in g.slots.iter_mut() {
            if s.busy && !s.flushed && !s.internal && s.deadline.is_some_and(|d| d < now) {
                s.flushed = true;
                expired.push(*s);
            }
        }
        for s in expired {
            tracing::debug!(
                qp = s.qp,
                wr_id = s.wr_id,
                "ofi: request not completed in time"
            );
            if let Some(qp) = self.qp(s.qp) {
                qp.fail(self, &mut g);
                qp.send_cq.push(
                    Wc {
                        wr_id: s.wr_id,
                        status: WcStatus::RetryExceeded,
                        opcode: s.opcode,
                        byte_len: 0,
                        imm: None,
                        qp_num: s.qp,
                    },
                    true,
                );
            }
        }
    }

    /// Reports every outstanding request of queue pair `q` as flushed.
    pub(crate) fn flush_slots(&self, g: &mut Inner, qp: &QpShared) {
        for s in g.slots.iter_mut() {
            if s.busy && !s.flushed && s.qp == qp.num {
                s.flushed = true;
                if s.signaled && !s.internal {
                    qp.send_cq.push(
                        Wc {
                            wr_id: s.wr_id,
                            status: WcStatus::WrFlush,
                            opcode: s.opcode,
                            byte_len: 0,
                            imm: None,
                            qp_num: qp.num,
                        },
                        true,
                    );
                }
            }
        }
    }

    /// The queue pair numbered `q`, if it exists.
    pub(crate) fn qp(&self, q: u32) -> Option<Arc<QpShared>> {
        self.qps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&q)
            .cloned()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let one = 1u64;
        // SAFETY: writes 8 bytes to an eventfd this domain owns.
        unsafe { libc::write(self.stop_efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        // Close the endpoint (and everything) before the bounce memory goes away (with the
        // fields, after this).
        self.h.close_now();
    }
}

/// Maps a libfabric error code of a failed request to the contract's status.
fn map_err(err: i32, prov_errno: i32) -> WcStatus {
    let e = err.unsigned_abs();
    let p = prov_errno.unsigned_abs() as i32;
    if e == sys::FI_ECANCELED
        && [
            libc::ENOENT,
            libc::EACCES,
            libc::EPERM,
            libc::EINVAL,
            libc::EFAULT,
            libc::ERANGE,
        ]
        .contains(&p)
    {
        // tcp (under ofi_rxm) cancels a request whose key or range the target refused.
        return WcStatus::RemoteAccess;
    }
    if e == sys::FI_EACCES
        || e == sys::FI_EPERM
        || e == sys::FI_EINVAL
        || e == sys::FI_EFAULT
        || e == sys::FI_ENOKEY
        || e == sys::FI_EKEYREJECTED
        || e == sys::FI_EOPBADSTATE
    {
        WcStatus::RemoteAccess
    } else if e == sys::FI_ETRUNC || e == sys::FI_ETOOSMALL {
        WcStatus::LocalLength
    } else if e == sys::FI_ECANCELED {
        WcStatus::WrFlush
    } else if e == sys::FI_EOPNOTSUPP || e == sys::FI_ENOSYS {
        WcStatus::RemoteInvalidRequest
    } else if e == sys::FI_ETIMEDOUT
        || e == sys::FI_EHOSTUNREACH
        || e == sys::FI_ECONNRESET
        || e == sys::FI_ENOTCONN
        || e == sys::FI_ECONNREFUSED
        || e == sys::FI_EIO
    {
        WcStatus::RetryExceeded
    } else {
        WcStatus::Fatal
    }
}

/// Opens fabric, domain, address vector, completion queue and an enabled endpoint bound to
/// both, from `info` (which the returned handles own and free). With `wait_fd`, the completion
/// queue gets a file-descriptor wait object (`FI_WAIT_FD`) where the provider offers one
/// (`tcp;ofi_rxm` does, libfabric 1.17's `shm` does not), else none.
pub(crate) fn open_handles(info: *mut sys::fi_info, wait_fd: bool) -> Result<Handles> {
    super::shm_regions::remove_stale_regions_of_this_pid();
    let mut h = Handles {
        info,
        ..Handles::EMPTY
    };
    // SAFETY: standard libfabric open sequence on the handles of `h`, each result checked;
    // on error `h` closes what was opened.
    unsafe {
        let r = sys::fi_fabric((*info).fabric_attr, &mut h.fabric, std::ptr::null_mut());
        if r != 0 {
            return Err(fi_error("fi_fabric", r as isize));
        }
        let r = sys::rfaas_fi_domain(h.fabric, info, &mut h.domain);
        if r != 0 {
            return Err(fi_error("fi_domain", r as isize));
        }
        let mut av_attr = sys::fi_av_attr::default();
        let r = sys::rfaas_fi_av_open(h.domain, &mut av_attr, &mut h.av);
        if r != 0 {
            return Err(fi_error("fi_av_open", r as isize));
        }
        let cq_attr = |wait_obj| sys::fi_cq_attr {
            size: 4096,
            format: sys::fi_cq_format_FI_CQ_FORMAT_DATA,
            wait_obj,
            ..Default::default()
        };
        let mut r = -(sys::FI_ENOSYS as i32);
        if wait_fd {
            r = sys::rfaas_fi_cq_open(
                h.domain,
                &mut cq_attr(sys::fi_wait_obj_FI_WAIT_FD),
                &mut h.cq,
            );
            if r == 0 {
                let mut fd: i32 = -1;
                if sys::rfaas_fi_cq_wait_fd(h.cq, &mut fd) == 0 && fd >= 0 {
                    h.wait_fd = Some(fd);
                }
            }
        }
        if r != 0 {
            // No wait object of that kind (shm: FI_ENOSYS): waiters spin, then sleep in slices.
            r = sys::rfaas_fi_cq_open(
                h.domain,
                &mut cq_attr(sys::fi_wait_obj_FI_WAIT_NONE),
                &mut h.cq,
            );
        }
        if r != 0 {
            return Err(fi_error("fi_cq_open", r as isize));
        }
        let r = sys::rfaas_fi_endpoint(h.domain, info, &mut h.ep);
        if r != 0 {
            return Err(fi_error("fi_endpoint", r as isize));
        }
        let r = sys::rfaas_fi_ep_bind(
            h.ep,
            h.cq.cast(),
            u64::from(sys::FI_TRANSMIT | sys::FI_RECV),
        );
        if r != 0 {
            return Err(fi_error("fi_ep_bind(cq)", r as isize));
        }
        let r = sys::rfaas_fi_ep_bind(h.ep, h.av.cast(), 0);
        if r != 0 {
            return Err(fi_error("fi_ep_bind(av)", r as isize));
        }
        let r = sys::rfaas_fi_enable(h.ep);
        if r != 0 {
            return Err(fi_error("fi_enable", r as isize));
        }
    }
    Ok(h)
}

/// The loaded libfabric's version, `major.minor`.
pub(crate) fn libfabric_version() -> String {
    let v = sys::fi_version();
    format!("{}.{}", v >> 16, v & 0xffff)
}

fn epoll_create() -> Result<OwnedFd> {
    // SAFETY: plain epoll_create1; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(FabricError::io(
            "epoll_create1",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches `fd` for input or hang-up, tagged `data`.
pub(crate) fn epoll_add(epfd: i32, fd: i32, data: u64) -> Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: data,
    };
    // SAFETY: valid epoll and target descriptors, `ev` lives across the call.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(FabricError::io(
            "epoll_ctl",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Stops watching `fd`.
pub(crate) fn epoll_del(epfd: i32, fd: i32) {
    // SAFETY: EPOLL_CTL_DEL ignores the event argument; errors (already removed) are harmless.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
}

/// The domain's progress thread: makes sure libfabric progress is driven at least every
/// [`PROGRESS_TICK_MS`] (so remote atomics and writes with data land, and credit grants leave,
/// while the application does not poll): it drives it itself only when nobody drained the
/// completion queue since its last tick. It also fails requests past their deadline and watches
/// the side-channel sockets of the queue pairs, so a peer that dies moves its queue pairs to the
/// error state.
fn progress_thread(weak: Weak<Domain>, epfd: OwnedFd) {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 32];
    let (mut seen, mut ticks) = (u64::MAX, 0u32);
    loop {
        {
            let Some(d) = weak.upgrade() else { return };
            if d.stop.load(Ordering::SeqCst) {
                return;
            }
            // Stand aside while the application drives progress itself (a hot loop polling
            // its completion queue): our call would only contend for the domain lock and the
            // cores. Otherwise drive it, so work lands while nobody polls.
            if d.drains.load(Ordering::Relaxed) == seen {
                d.progress();
            }
            seen = d.drains.load(Ordering::Relaxed);
            ticks = ticks.wrapping_add(1);
            if ticks % EXPIRE_EVERY == 0 {
                d.expire_slots();
            }
        }
        // SAFETY: `evs` has room for 32 events; the epoll fd is this thread's own duplicate.
        let n = unsafe {
            libc::epoll_wait(
                epfd.as_raw_fd(),
                evs.as_mut_ptr(),
                evs.len() as i32,
                PROGRESS_TICK_MS,
            )
        };
        if n <= 0 {
            continue;
        }
        let Some(d) = weak.upgrade() else { return };
        for ev in &evs[..n as usize] {
            let tag = ev.u64;
            if tag == u64::MAX {
                return; // stop
            }
            if let Some(qp) = d.qp(tag as u32) {
                qp.socket_event(&d);
            }
        }
    }
}
