//! rdma-sys writes several structs by hand (those with unions: `ibv_wc`, `ibv_send_wr`,
//! `rdma_cm_event`, `rdma_addr`, ...). A wrong offset there would corrupt memory silently, and
//! without a device no other test would notice, so this checks the fields the provider uses
//! against the offsets of the C headers (rdma-core 44, x86_64 / aarch64 LP64), measured with
//! `offsetof` in a C program.

use std::mem::{offset_of, size_of};

use rdma_sys::*;

#[test]
#[cfg(target_pointer_width = "64")]
fn hand_written_structs_match_the_c_headers() {
    assert_eq!(size_of::<ibv_wc>(), 48);
    assert_eq!(offset_of!(ibv_wc, status), 8);
    assert_eq!(offset_of!(ibv_wc, opcode), 12);
    assert_eq!(offset_of!(ibv_wc, byte_len), 20);
    assert_eq!(offset_of!(ibv_wc, imm_data_invalidated_rkey_union), 24);
    assert_eq!(offset_of!(ibv_wc, qp_num), 28);
    assert_eq!(offset_of!(ibv_wc, wc_flags), 36);

    assert_eq!(size_of::<ibv_send_wr>(), 128);
    assert_eq!(offset_of!(ibv_send_wr, sg_list), 16);
    assert_eq!(offset_of!(ibv_send_wr, num_sge), 24);
    assert_eq!(offset_of!(ibv_send_wr, opcode), 28);
    assert_eq!(offset_of!(ibv_send_wr, send_flags), 32);
    assert_eq!(offset_of!(ibv_send_wr, imm_data_invalidated_rkey_union), 36);
    assert_eq!(offset_of!(ibv_send_wr, wr), 40);
    assert_eq!(offset_of!(rdma_t, rkey), 8);
    assert_eq!(offset_of!(atomic_t, compare_add), 8);
    assert_eq!(offset_of!(atomic_t, swap), 16);
    assert_eq!(offset_of!(atomic_t, rkey), 24);
    assert_eq!(size_of::<ibv_recv_wr>(), 32);
    assert_eq!(size_of::<ibv_sge>(), 16);

    assert_eq!(size_of::<rdma_cm_id>(), 416);
    assert_eq!(offset_of!(rdma_cm_id, verbs), 0);
    assert_eq!(offset_of!(rdma_cm_id, context), 16);
    assert_eq!(offset_of!(rdma_cm_id, qp), 24);
    assert_eq!(offset_of!(rdma_cm_id, route), 32);
    assert_eq!(offset_of!(rdma_route, addr), 0);
    assert_eq!(offset_of!(rdma_addr, src_addr_union), 0);
    assert_eq!(offset_of!(rdma_addr, dst_addr_union), 128);
    assert_eq!(offset_of!(rdma_cm_id, ps), 344);
    assert_eq!(offset_of!(rdma_cm_id, event), 352);
    assert_eq!(offset_of!(rdma_cm_id, pd), 400);

    assert_eq!(offset_of!(rdma_cm_event, event), 16);
    assert_eq!(offset_of!(rdma_cm_event, status), 20);
    assert_eq!(offset_of!(rdma_cm_event, param), 24);
    assert_eq!(size_of::<rdma_conn_param>(), 24);
    assert_eq!(offset_of!(rdma_conn_param, private_data_len), 8);
    assert_eq!(offset_of!(rdma_conn_param, qp_num), 16);

    assert_eq!(size_of::<ibv_qp_init_attr>(), 64);
    assert_eq!(offset_of!(ibv_qp_init_attr, cap), 32);
    assert_eq!(offset_of!(ibv_qp_init_attr, qp_type), 52);
    assert_eq!(offset_of!(ibv_qp_init_attr, sq_sig_all), 56);
    assert_eq!(size_of::<ibv_qp_attr>(), 144);
    assert_eq!(offset_of!(ibv_qp_attr, ah_attr), 56);
    assert_eq!(offset_of!(ibv_qp_attr, min_rnr_timer), 128);

    assert_eq!(offset_of!(ibv_cq, cqe), 28);
    assert_eq!(offset_of!(ibv_comp_channel, fd), 8);
    assert_eq!(offset_of!(ibv_mr, lkey), 36);
    assert_eq!(offset_of!(ibv_mr, rkey), 40);
    assert_eq!(offset_of!(ibv_qp, qp_num), 52);
    assert_eq!(offset_of!(ibv_context, device), 0);
    assert_eq!(size_of::<ibv_device_attr>(), 232);
    assert_eq!(offset_of!(ibv_device_attr, max_qp_wr), 112);
    assert_eq!(offset_of!(ibv_device_attr, max_cqe), 132);
    assert_eq!(offset_of!(rdma_event_channel, fd), 0);
}
