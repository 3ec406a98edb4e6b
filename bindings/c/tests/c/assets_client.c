/* assets_client.c: an allocation with a named asset through the C API, on the C library with an
 * init function (jobs/functions-c/stateful.c, whose rfaas_init keeps the "table" asset).
 *
 *   assets_client CLUSTER_JSON LIBSTATEFUL_C
 *
 * Checks that lookup_c maps bytes through the table this program sent (expected values computed
 * here), that rfaas_init ran once, and that an init failure is RFAAS_STATUS_INIT_FAILED with the
 * library's message. Prints "assets_client: ok" at the end; exits 1 at the first failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rfaas.h>

static void fail(const char *what, int rc) {
    fprintf(stderr, "assets_client: %s: %s: %s\n", what, rfaas_status_name(rc),
            rfaas_last_error());
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CLUSTER_JSON LIBSTATEFUL_C\n", argv[0]);
        return 2;
    }
    rfaas_cluster *cluster = NULL;
    int rc = rfaas_cluster_open(argv[1], &cluster);
    if (rc != RFAAS_STATUS_OK) fail("cluster_open", rc);

    uint8_t table[256];
    for (int i = 0; i < 256; i++) table[i] = (uint8_t)(255 - i);
    rfaas_allocation_asset assets[2] = {
        {.name = "table", .data = table, .len = sizeof table},
        {.name = "fail", .data = (const uint8_t *)"from C", .len = 6},
    };
    rfaas_allocation_spec spec;
    rfaas_allocation_spec_init(&spec);
    spec.library_path = argv[2];
    spec.functions = "lookup_c,init_count_c";
    spec.input_capacity = 256;
    spec.output_capacity = 256;
    spec.hot_timeout_ms = 0;
    spec.assets = assets;
    spec.n_assets = 1;

    rfaas_executor *exec = NULL;
    rc = rfaas_allocate(cluster, &spec, &exec);
    if (rc != RFAAS_STATUS_OK) fail("allocate with a table", rc);
    uint32_t f_lookup = 0, f_count = 0;
    rc = rfaas_function(exec, "lookup_c", &f_lookup);
    if (rc != RFAAS_STATUS_OK) fail("function lookup_c", rc);
    rc = rfaas_function(exec, "init_count_c", &f_count);
    if (rc != RFAAS_STATUS_OK) fail("function init_count_c", rc);
    uint8_t in[100], out[256];
    for (int i = 0; i < 100; i++) in[i] = (uint8_t)(i * 3);
    for (int round = 0; round < 10; round++) {
        size_t n = 0;
        rc = rfaas_invoke(exec, f_lookup, in, sizeof in, out, sizeof out, &n);
        if (rc != RFAAS_STATUS_OK) fail("invoke lookup_c", rc);
        if (n != sizeof in) fail("lookup_c length", -1);
        for (int i = 0; i < 100; i++)
            if (out[i] != (uint8_t)(255 - (uint8_t)(i * 3))) fail("lookup_c bytes", -1);
    }
    size_t n = 0;
    rc = rfaas_invoke(exec, f_count, NULL, 0, out, sizeof out, &n);
    if (rc != RFAAS_STATUS_OK || n != 4) fail("invoke init_count_c", rc);
    uint32_t count = (uint32_t)out[0] | (uint32_t)out[1] << 8 | (uint32_t)out[2] << 16 |
                     (uint32_t)out[3] << 24;
    printf("assets_client: lookup through the table: ok, init ran %u time(s)\n", count);
    if (count != 1) fail("init count", -1);
    rc = rfaas_deallocate(exec);
    if (rc != RFAAS_STATUS_OK) fail("deallocate", rc);

    spec.n_assets = 2; /* "fail": the library's rfaas_init refuses */
    exec = NULL;
    rc = rfaas_allocate(cluster, &spec, &exec);
    printf("assets_client: allocate with 'fail' -> %s: %s\n", rfaas_status_name(rc),
           rfaas_last_error());
    if (rc != RFAAS_STATUS_INIT_FAILED || exec != NULL ||
        strcmp(rfaas_last_error(), "function library init failed: asset 'fail' says: from C") != 0)
        fail("allocate with 'fail'", rc);

    assets[0].name = "bad/name";
    spec.n_assets = 1;
    rc = rfaas_allocate(cluster, &spec, &exec);
    if (rc != RFAAS_STATUS_INVALID_ARGUMENT ||
        strstr(rfaas_last_error(), "invalid asset name") == NULL)
        fail("allocate with a bad asset name", rc);
    spec.assets = NULL;
    rc = rfaas_allocate(cluster, &spec, &exec);
    if (rc != RFAAS_STATUS_NULL_POINTER) fail("allocate with NULL assets and n_assets 1", rc);

    rfaas_cluster_close(cluster);
    printf("assets_client: ok\n");
    return 0;
}
