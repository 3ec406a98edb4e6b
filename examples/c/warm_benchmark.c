/* warm_benchmark.c: the warm-invocation benchmark from C, through librfaas: latency of
 * rfaas_invoke on one hot worker (it busy-polls), one call at a time. Prints one CSV row per
 * measured call on stdout, in the columns of the Rust benchmarks plus `client` (= c), and
 * p50/p99 on stderr. scripts/capi-bench.sh runs it and the Rust warm_benchmark on the same
 * cluster in the same run.
 *
 *   cc -O2 -o warm_benchmark_c warm_benchmark.c $(pkg-config --cflags --libs rfaas)
 *   ./warm_benchmark_c CLUSTER_JSON LIBRARY [FUNCTION [SIZES [REPETITIONS [WARMUP [CLIENT_CORE]]]]]
 *
 * SIZES is comma-separated (default 64); the client thread is pinned to CLIENT_CORE (default:
 * the last core it may run on, as the Rust benchmarks do).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rfaas.h>

#define CHECK(call)                                                                     \
    do {                                                                                \
        int rc_ = (call);                                                               \
        if (rc_ != RFAAS_STATUS_OK) {                                                   \
            fprintf(stderr, "warm_benchmark_c: %s failed: %s: %s\n", #call,            \
                    rfaas_status_name(rc_), rfaas_last_error());                        \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static void pin(int core) {
    cpu_set_t set;
    if (core < 0) {
        if (sched_getaffinity(0, sizeof set, &set) != 0) return;
        for (int c = CPU_SETSIZE - 1; c >= 0; c--)
            if (CPU_ISSET(c, &set)) { core = c; break; }
    }
    if (core < 0) return;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) perror("warm_benchmark_c: pin");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CLUSTER_JSON LIBRARY [FUNCTION [SIZES [REPETITIONS [WARMUP [CLIENT_CORE]]]]]\n", argv[0]);
        return 2;
    }
    const char *function = argc > 3 ? argv[3] : "empty";
    const char *sizes_arg = argc > 4 ? argv[4] : "64";
    long reps = argc > 5 ? atol(argv[5]) : 20000;
    long warmup = argc > 6 ? atol(argv[6]) : 100;
    int core = argc > 7 ? atoi(argv[7]) : -1;
    if (reps <= 0 || warmup < 0) {
        fprintf(stderr, "warm_benchmark_c: REPETITIONS must be positive\n");
        return 2;
    }
    long sizes[64];
    int nsizes = 0;
    char *list = strdup(sizes_arg);
    for (char *tok = strtok(list, ","); tok && nsizes < 64; tok = strtok(NULL, ","))
        sizes[nsizes++] = atol(tok);
    free(list);
    long max_size = 0;
    for (int i = 0; i < nsizes; i++) {
        if (sizes[i] < 0) { fprintf(stderr, "warm_benchmark_c: bad size\n"); return 2; }
        if (sizes[i] > max_size) max_size = sizes[i];
    }
    if (nsizes == 0) { fprintf(stderr, "warm_benchmark_c: no sizes\n"); return 2; }

    pin(core);
    rfaas_cluster *cluster = NULL;
    CHECK(rfaas_cluster_open(argv[1], &cluster));
    const char *provider = rfaas_cluster_provider(cluster);
    rfaas_allocation_spec spec;
    CHECK(rfaas_allocation_spec_init(&spec));
    spec.library_path = argv[2];
    spec.functions = function;
    spec.cores = 1;
    spec.input_capacity = (uint32_t)(max_size > 0 ? max_size : 1);
    spec.output_capacity = spec.input_capacity;
    spec.hot_timeout_ms = -1; /* hot: the worker busy-polls */
    rfaas_executor *exec = NULL;
    CHECK(rfaas_allocate(cluster, &spec, &exec));
    uint32_t f;
    CHECK(rfaas_function(exec, function, &f));

    unsigned char *in = malloc(max_size + 1), *out = malloc(max_size + 1);
    long long *lat = malloc(reps * sizeof *lat);
    printf("benchmark,mode,provider,payload_bytes,rank,world_size,node,worker,repetition,latency_ns,client\n");
    for (int s = 0; s < nsizes; s++) {
        long size = sizes[s];
        for (long i = 0; i < size; i++) in[i] = (unsigned char)(i * 31 + size);
        for (long i = 0; i < warmup + reps; i++) {
            size_t n = 0;
            long long t = now_ns();
            int rc = rfaas_invoke(exec, f, in, (size_t)size, out, (size_t)spec.output_capacity, &n);
            long long dt = now_ns() - t;
            if (rc != RFAAS_STATUS_OK) {
                fprintf(stderr, "warm_benchmark_c: call %ld: %s: %s\n", i, rfaas_status_name(rc), rfaas_last_error());
                return 1;
            }
            if (i >= warmup) lat[i - warmup] = dt;
        }
        for (long i = 0; i < reps; i++)
            printf("warm_benchmark,hot,%s,%ld,0,1,,0,%ld,%lld,c\n", provider, size, i, lat[i]);
        qsort(lat, reps, sizeof *lat, cmp_ll);
        fprintf(stderr, "warm_benchmark_c: hot %ld B: count %ld p50 %lld ns p99 %lld ns\n", size,
                reps, lat[(reps - 1) / 2], lat[(long)((reps - 1) * 0.99)]);
    }
    CHECK(rfaas_deallocate(exec));
    rfaas_cluster_close(cluster);
    free(in);
    free(out);
    free(lat);
    return 0;
}
