/*
 * Example rfaas function library written in C: shows that libraries with the rFaaS C ABI work
 * unchanged.
 *
 *     uint32_t f(void *in, uint32_t in_len, void *out);
 *
 * `in` holds the `in_len` payload bytes, `out` is the worker's output buffer (its capacity is the
 * allocation's output capacity, which a C function is not told: these functions need at most
 * `in_len` bytes, or 8), and the return value is the number of output bytes. rfaas checks the
 * returned length against the caller's capacity before sending anything back.
 *
 * Build: make -C jobs/functions-c OUT=../../target/functions   (-> libfunctions_c.so)
 */
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* echo_c: copies the input to the output. */
EXPORT uint32_t echo_c(void *in, uint32_t in_len, void *out)
{
    if (in_len > 0)
        memcpy(out, in, in_len);
    return in_len;
}

/* checksum_c: 64-bit FNV-1a of the input, written as 8 little-endian bytes (the same value as
 * the Rust library's `checksum`). */
EXPORT uint32_t checksum_c(void *in, uint32_t in_len, void *out)
{
    const unsigned char *p = in;
    unsigned char *o = out;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (uint32_t i = 0; i < in_len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    for (int i = 0; i < 8; i++)
        o[i] = (unsigned char)(h >> (8 * i));
    return 8;
}

/* empty_c: does no work, writes nothing, returns the input length (like rFaaS's `empty`). */
EXPORT uint32_t empty_c(void *in, uint32_t in_len, void *out)
{
    (void)in;
    (void)out;
    return in_len;
}

/* Not a function: the version of this library. Asking rfaas for a function of this name fails
 * with "unknown function" (names resolve to functions defined by the library only). */
EXPORT const char functions_c_version[] = "1";
