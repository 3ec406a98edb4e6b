//! The `ofi-raw` floor (filled in below).
