/*
 * rfaas_function.h: what a function library written in C exports for rfaas.
 *
 * A function library is an ELF shared object (cc -shared -fPIC). rfaas loads it in an executor
 * process (one per allocation, one worker thread per core) and calls its functions by name.
 * This header needs nothing but the C standard library and links against nothing: a function
 * library does not link librfaas.
 *
 * 1. Functions: the rFaaS C ABI, unchanged.
 *
 *        RFAAS_EXPORT uint32_t my_function(void *in, uint32_t in_len, void *out);
 *
 *    `in` holds the invocation's `in_len` payload bytes (the function may modify them); `out`
 *    is the worker's output buffer, whose capacity is the allocation's output capacity (the
 *    function is not told it: it knows it from its contract with the client). The return value
 *    is the number of bytes written at `out`; a value larger than the capacity is reported to
 *    the client as an error and nothing is sent. Every worker thread calls into the same loaded
 *    library: functions must be thread-safe.
 *
 * 2. Optional state loaded once: `rfaas_init` and assets.
 *
 *    An allocation may ship named assets beside the library (a model, a lookup table): bytes
 *    the client adds with AllocationSpec::add_asset (Rust), rfaas_spec_add_asset (C) or
 *    `assets=` (Python), uploaded once to the executor manager and cached there by content
 *    hash. If the library exports `rfaas_init`, the executor calls it exactly once per process,
 *    after loading the library and before its workers take the first invocation (before the
 *    allocation is reported ready), with every asset of the allocation, in the order the client
 *    added them (n_assets may be 0).
 *
 *    - Return RFAAS_INIT_OK (0) when the library is ready. Anything else fails the allocation:
 *      the executor stops, its cores are freed, and the client's allocation fails with
 *      "function library init failed: <message>", where <message> is the NUL-terminated text
 *      written into `err` (at most `err_cap` bytes including the NUL; err_cap is at least 1).
 *    - The asset bytes stay mapped, read-only and unchanged, for the life of the executor
 *      process: the library may keep the `data` pointers (and the `name` pointers) instead of
 *      copying. They must not be written to.
 *    - Init runs on one thread, before any function is called: it needs no locking against
 *      functions. It should not take long: the executor manager waits for it at most its
 *      `executor_start_timeout_ms` (10 s by default), then fails the allocation.
 *    - A crash in init ends the executor: the allocation fails with the executor's log tail.
 *
 *    A library without `rfaas_init` works exactly as before (its assets, if any, are ignored).
 *
 * Names: asset names are 1 to 128 bytes of ASCII letters, digits, '.', '_' and '-', not starting
 * with a dot. The function name `rfaas_init` cannot be invoked by clients.
 */
#ifndef RFAAS_FUNCTION_H
#define RFAAS_FUNCTION_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks a symbol for export (libraries built with -fvisibility=hidden export only these). */
#define RFAAS_EXPORT __attribute__((visibility("default")))

/* What rfaas_init returns when the library is ready. */
#define RFAAS_INIT_OK 0

/* One asset, as rfaas_init receives it. */
typedef struct rfaas_asset {
    const char *name;    /* NUL-terminated name, as the client named the asset */
    const uint8_t *data; /* its bytes (may be NULL when len is 0); read-only, kept mapped */
    uint64_t len;        /* their number */
} rfaas_asset;

/* A function with the rFaaS C ABI (see 1. above). */
typedef uint32_t (*rfaas_function)(void *in, uint32_t in_len, void *out);

/* The optional init entry (see 2. above); export it under exactly this name. */
typedef int32_t (*rfaas_init_function)(const rfaas_asset *assets, uint32_t n_assets, char *err,
                                       uint32_t err_cap);

/* Declaration of the init entry, for a library to define:
 *
 *     RFAAS_EXPORT int32_t rfaas_init(const rfaas_asset *assets, uint32_t n_assets, char *err,
 *                                     uint32_t err_cap) { ... }
 */
int32_t rfaas_init(const rfaas_asset *assets, uint32_t n_assets, char *err, uint32_t err_cap);

#ifdef __cplusplus
}
#endif

#endif /* RFAAS_FUNCTION_H */
