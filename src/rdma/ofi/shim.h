/* The libfabric calls rfaas uses that the headers define as `static inline` (they dispatch
 * through the provider's operation tables), exported as real functions for Rust. Only API that
 * exists from libfabric 1.17 to 2.x. They call only through the operation tables of objects
 * libfabric made, never an exported libfabric symbol, so the shim needs no link to libfabric:
 * the exported entry points are opened at run time (sys.rs). */
#ifndef RFAAS_OFI_SHIM_H
#define RFAAS_OFI_SHIM_H
#include <rdma/fabric.h>
#include <rdma/fi_atomic.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

int rfaas_fi_domain(struct fid_fabric *fabric, struct fi_info *info, struct fid_domain **domain);
int rfaas_fi_endpoint(struct fid_domain *domain, struct fi_info *info, struct fid_ep **ep);
int rfaas_fi_av_open(struct fid_domain *domain, struct fi_av_attr *attr, struct fid_av **av);
int rfaas_fi_cq_open(struct fid_domain *domain, struct fi_cq_attr *attr, struct fid_cq **cq);
int rfaas_fi_ep_bind(struct fid_ep *ep, struct fid *bfid, uint64_t flags);
int rfaas_fi_enable(struct fid_ep *ep);
int rfaas_fi_getname(struct fid_ep *ep, void *addr, size_t *addrlen);
int rfaas_fi_av_insert(struct fid_av *av, const void *addr, fi_addr_t *fi_addr);
int rfaas_fi_mr_reg(struct fid_domain *domain, void *buf, size_t len, uint64_t access,
                    uint64_t requested_key, struct fid_mr **mr);
uint64_t rfaas_fi_mr_key(struct fid_mr *mr);
void *rfaas_fi_mr_desc(struct fid_mr *mr);
int rfaas_fi_mr_bind_ep(struct fid_mr *mr, struct fid_ep *ep);
int rfaas_fi_mr_enable(struct fid_mr *mr);
int rfaas_fi_close(struct fid *fid);
ssize_t rfaas_fi_cq_read(struct fid_cq *cq, struct fi_cq_data_entry *buf, size_t count);
ssize_t rfaas_fi_cq_readerr(struct fid_cq *cq, struct fi_cq_err_entry *buf);
const char *rfaas_fi_cq_strerror(struct fid_cq *cq, int prov_errno, const void *err_data);
ssize_t rfaas_fi_writemsg(struct fid_ep *ep, const struct fi_msg_rma *msg, uint64_t flags);
ssize_t rfaas_fi_readmsg(struct fid_ep *ep, const struct fi_msg_rma *msg, uint64_t flags);
ssize_t rfaas_fi_sendmsg(struct fid_ep *ep, const struct fi_msg *msg, uint64_t flags);
ssize_t rfaas_fi_recv(struct fid_ep *ep, void *buf, size_t len, void *desc, void *context);
ssize_t rfaas_fi_fetch_atomicmsg(struct fid_ep *ep, const struct fi_msg_atomic *msg,
                                 struct fi_ioc *resultv, void **result_desc, uint64_t flags);
ssize_t rfaas_fi_compare_atomicmsg(struct fid_ep *ep, const struct fi_msg_atomic *msg,
                                   const struct fi_ioc *comparev, void **compare_desc,
                                   struct fi_ioc *resultv, void **result_desc, uint64_t flags);
int rfaas_fi_fetch_atomicvalid(struct fid_ep *ep, enum fi_datatype dt, enum fi_op op, size_t *count);
int rfaas_fi_compare_atomicvalid(struct fid_ep *ep, enum fi_datatype dt, enum fi_op op,
                                 size_t *count);
/* The completion queue's wait object as a file descriptor (fi_control FI_GETWAIT); 0 or a
 * negative libfabric error. */
int rfaas_fi_cq_wait_fd(struct fid_cq *cq, int *fd);
/* fi_trywait on one completion queue: 0 when it is safe to block on its wait fd, -FI_EAGAIN
 * when completions (or provider work) are pending. */
int rfaas_fi_trywait_cq(struct fid_fabric *fabric, struct fid_cq *cq);
#endif
