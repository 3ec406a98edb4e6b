/*
 * Example C function library with state loaded once (see bindings/c/include/rfaas_function.h):
 * its rfaas_init keeps a pointer to the asset named "table" (256 bytes, mapped by the executor
 * for the life of the process: no copy), and `lookup_c` maps every input byte through it.
 *
 *   rfaas_init  fails with a message when "table" is missing or not 256 bytes long, or when an
 *               asset named "fail" is present (the message quotes its bytes).
 *   lookup_c    out[i] = table[in[i]]; returns in_len.
 *   init_count_c  how many times rfaas_init ran in this process, as 4 little-endian bytes.
 *
 * Build: make -C jobs/functions-c OUT=../../target/functions   (-> libstateful_c.so)
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "rfaas_function.h"

static const uint8_t *table;
static atomic_uint init_calls;

RFAAS_EXPORT int32_t rfaas_init(const rfaas_asset *assets, uint32_t n_assets, char *err,
                                uint32_t err_cap)
{
    atomic_fetch_add(&init_calls, 1);
    const rfaas_asset *found = NULL;
    for (uint32_t i = 0; i < n_assets; i++) {
        if (strcmp(assets[i].name, "fail") == 0) {
            int shown = (int)(assets[i].len > 200 ? 200 : assets[i].len);
            const char *text = assets[i].data ? (const char *)assets[i].data : "";
            snprintf(err, err_cap, "asset 'fail' says: %.*s", shown, text);
            return 1;
        }
        if (strcmp(assets[i].name, "table") == 0)
            found = &assets[i];
    }
    if (found == NULL) {
        snprintf(err, err_cap, "no asset named 'table' among %u", n_assets);
        return 2;
    }
    if (found->len != 256) {
        snprintf(err, err_cap, "asset 'table' has %llu bytes, not 256",
                 (unsigned long long)found->len);
        return 3;
    }
    table = found->data; /* kept mapped and unchanged by the executor: no copy needed */
    return RFAAS_INIT_OK;
}

RFAAS_EXPORT uint32_t lookup_c(void *in, uint32_t in_len, void *out)
{
    const uint8_t *p = in;
    uint8_t *o = out;
    if (table == NULL)
        return UINT32_MAX; /* not initialised: reported as "output too large" */
    for (uint32_t i = 0; i < in_len; i++)
        o[i] = table[p[i]];
    return in_len;
}

RFAAS_EXPORT uint32_t init_count_c(void *in, uint32_t in_len, void *out)
{
    (void)in;
    (void)in_len;
    uint32_t n = atomic_load(&init_calls);
    uint8_t *o = out;
    for (int i = 0; i < 4; i++)
        o[i] = (uint8_t)(n >> (8 * i));
    return 4;
}
