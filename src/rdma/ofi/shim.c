/* See shim.h. Each function forwards to the `static inline` call of the same name. */
#include "shim.h"

int rfaas_fi_domain(struct fid_fabric *fabric, struct fi_info *info, struct fid_domain **domain) {
    return fi_domain(fabric, info, domain, NULL);
}

int rfaas_fi_endpoint(struct fid_domain *domain, struct fi_info *info, struct fid_ep **ep) {
    return fi_endpoint(domain, info, ep, NULL);
}

int rfaas_fi_av_open(struct fid_domain *domain, struct fi_av_attr *attr, struct fid_av **av) {
    return fi_av_open(domain, attr, av, NULL);
}

int rfaas_fi_cq_open(struct fid_domain *domain, struct fi_cq_attr *attr, struct fid_cq **cq) {
    return fi_cq_open(domain, attr, cq, NULL);
}

int rfaas_fi_ep_bind(struct fid_ep *ep, struct fid *bfid, uint64_t flags) {
    return fi_ep_bind(ep, bfid, flags);
}

int rfaas_fi_enable(struct fid_ep *ep) { return fi_enable(ep); }

int rfaas_fi_getname(struct fid_ep *ep, void *addr, size_t *addrlen) {
    return fi_getname(&ep->fid, addr, addrlen);
}

int rfaas_fi_av_insert(struct fid_av *av, const void *addr, fi_addr_t *fi_addr) {
    return fi_av_insert(av, addr, 1, fi_addr, 0, NULL);
}

int rfaas_fi_mr_reg(struct fid_domain *domain, void *buf, size_t len, uint64_t access,
                    uint64_t requested_key, struct fid_mr **mr) {
    return fi_mr_reg(domain, buf, len, access, 0, requested_key, 0, mr, NULL);
}

uint64_t rfaas_fi_mr_key(struct fid_mr *mr) { return fi_mr_key(mr); }

void *rfaas_fi_mr_desc(struct fid_mr *mr) { return fi_mr_desc(mr); }

int rfaas_fi_mr_bind_ep(struct fid_mr *mr, struct fid_ep *ep) {
    return fi_mr_bind(mr, &ep->fid, 0);
}

int rfaas_fi_mr_enable(struct fid_mr *mr) { return fi_mr_enable(mr); }

int rfaas_fi_close(struct fid *fid) { return fi_close(fid); }

ssize_t rfaas_fi_cq_read(struct fid_cq *cq, struct fi_cq_data_entry *buf, size_t count) {
    return fi_cq_read(cq, buf, count);
}

ssize_t rfaas_fi_cq_readerr(struct fid_cq *cq, struct fi_cq_err_entry *buf) {
    return fi_cq_readerr(cq, buf, 0);
}

const char *rfaas_fi_cq_strerror(struct fid_cq *cq, int prov_errno, const void *err_data) {
    return fi_cq_strerror(cq, prov_errno, err_data, NULL, 0);
}

ssize_t rfaas_fi_writemsg(struct fid_ep *ep, const struct fi_msg_rma *msg, uint64_t flags) {
    return fi_writemsg(ep, msg, flags);
}

ssize_t rfaas_fi_readmsg(struct fid_ep *ep, const struct fi_msg_rma *msg, uint64_t flags) {
    return fi_readmsg(ep, msg, flags);
}

ssize_t rfaas_fi_sendmsg(struct fid_ep *ep, const struct fi_msg *msg, uint64_t flags) {
    return fi_sendmsg(ep, msg, flags);
}

ssize_t rfaas_fi_recv(struct fid_ep *ep, void *buf, size_t len, void *desc, void *context) {
    return fi_recv(ep, buf, len, desc, FI_ADDR_UNSPEC, context);
}

ssize_t rfaas_fi_fetch_atomicmsg(struct fid_ep *ep, const struct fi_msg_atomic *msg,
                                 struct fi_ioc *resultv, void **result_desc, uint64_t flags) {
    return fi_fetch_atomicmsg(ep, msg, resultv, result_desc, 1, flags);
}

ssize_t rfaas_fi_compare_atomicmsg(struct fid_ep *ep, const struct fi_msg_atomic *msg,
                                   const struct fi_ioc *comparev, void **compare_desc,
                                   struct fi_ioc *resultv, void **result_desc, uint64_t flags) {
    return fi_compare_atomicmsg(ep, msg, comparev, compare_desc, 1, resultv, result_desc, 1,
                                flags);
}

int rfaas_fi_fetch_atomicvalid(struct fid_ep *ep, enum fi_datatype dt, enum fi_op op,
                               size_t *count) {
    return fi_fetch_atomicvalid(ep, dt, op, count);
}

int rfaas_fi_compare_atomicvalid(struct fid_ep *ep, enum fi_datatype dt, enum fi_op op,
                                 size_t *count) {
    return fi_compare_atomicvalid(ep, dt, op, count);
}

int rfaas_fi_cq_wait_fd(struct fid_cq *cq, int *fd) { return fi_control(&cq->fid, FI_GETWAIT, fd); }

int rfaas_fi_trywait_cq(struct fid_fabric *fabric, struct fid_cq *cq) {
    struct fid *fids[1] = {&cq->fid};
    return fi_trywait(fabric, fids, 1);
}
