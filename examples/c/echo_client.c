/* echo_client.c: a plain C client of rfaas (no MPI calls): allocates one worker, invokes `echo`
 * blocking, then several calls in flight (submit, poll, wait), and releases everything.
 *
 *   cc -o echo_client echo_client.c $(pkg-config --cflags --libs rfaas)
 *   ./echo_client /tmp/rfaas/cluster.json target/release/libfunctions.so
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rfaas.h>

#define CHECK(call)                                                                     \
    do {                                                                                \
        int rc_ = (call);                                                               \
        if (rc_ != RFAAS_STATUS_OK) {                                                   \
            fprintf(stderr, "echo_client: %s failed: %s: %s\n", #call,                 \
                    rfaas_status_name(rc_), rfaas_last_error());                        \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

enum { IN_FLIGHT = 4 };

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CLUSTER_JSON FUNCTION_LIBRARY\n", argv[0]);
        return 2;
    }
    rfaas_cluster *cluster = NULL;
    CHECK(rfaas_cluster_open(argv[1], &cluster));

    rfaas_allocation_spec spec;
    CHECK(rfaas_allocation_spec_init(&spec));
    spec.library_path = argv[2];
    spec.functions = "echo";
    spec.cores = 1;
    spec.input_capacity = 256;
    spec.output_capacity = 256;
    spec.slots = IN_FLIGHT;
    spec.hot_timeout_ms = 0; /* warm: the worker sleeps between calls */
    rfaas_executor *exec = NULL;
    CHECK(rfaas_allocate(cluster, &spec, &exec));

    uint32_t echo;
    CHECK(rfaas_function(exec, "echo", &echo));

    const char *msg = "hello from C";
    char out[256];
    size_t n = 0;
    CHECK(rfaas_invoke(exec, echo, msg, strlen(msg), out, sizeof out, &n));
    if (n != strlen(msg) || memcmp(out, msg, n) != 0) {
        fprintf(stderr, "echo_client: got %zu bytes \"%.*s\"\n", n, (int)n, out);
        return 1;
    }
    printf("echo_client: invoke: \"%.*s\"\n", (int)n, out);

    /* Several calls in flight on the worker: the first polled until done, the rest waited. */
    rfaas_pending *pending[IN_FLIGHT];
    char inputs[IN_FLIGHT][32];
    for (int i = 0; i < IN_FLIGHT; i++) {
        snprintf(inputs[i], sizeof inputs[i], "call %d of %d", i, IN_FLIGHT);
        CHECK(rfaas_submit(exec, echo, inputs[i], strlen(inputs[i]), sizeof out, -1,
                           &pending[i]));
    }
    for (int i = 0; i < IN_FLIGHT; i++) {
        memset(out, 0, sizeof out);
        if (i == 0) {
            int done = 0;
            long polls = 0;
            while (!done) {
                CHECK(rfaas_poll_pending(exec, pending[i], out, sizeof out, &n, &done));
                polls++;
            }
            printf("echo_client: poll: done after %ld polls\n", polls);
        } else {
            CHECK(rfaas_wait_pending(exec, pending[i], out, sizeof out, &n));
        }
        if (n != strlen(inputs[i]) || memcmp(out, inputs[i], n) != 0) {
            fprintf(stderr, "echo_client: call %d: got \"%.*s\"\n", i, (int)n, out);
            return 1;
        }
    }
    printf("echo_client: %d calls in flight: ok\n", IN_FLIGHT);

    CHECK(rfaas_deallocate(exec));

    /* The library may also be given as bytes (here read from the file): a second allocation. */
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror(argv[2]); return 1; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *bytes = (uint8_t *)malloc(size > 0 ? (size_t)size : 1);
    if (size <= 0 || fread(bytes, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "echo_client: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    spec.library = bytes;
    spec.library_len = (size_t)size;
    spec.library_path = NULL;
    CHECK(rfaas_allocate(cluster, &spec, &exec));
    CHECK(rfaas_function(exec, "echo", &echo));
    CHECK(rfaas_invoke(exec, echo, "bytes", 5, out, sizeof out, &n));
    if (n != 5 || memcmp(out, "bytes", 5) != 0) {
        fprintf(stderr, "echo_client: library as bytes: got %zu bytes\n", n);
        return 1;
    }
    printf("echo_client: library as %ld bytes: ok\n", size);
    CHECK(rfaas_deallocate(exec));
    free(bytes);
    rfaas_cluster_close(cluster);
    printf("echo_client: ok\n");
    return 0;
}
