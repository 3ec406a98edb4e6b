/* bad_input.c: every kind of bad input through the C API gets its error code and a message, and
 * the application carries on. Run under mpirun (the session part is collective).
 *
 *   bad_input CLUSTER_JSON LIBRARY
 *
 * Prints "ok: <check>" per check and "bad_input: N checks passed" at the end; exits 1 at the
 * first check that fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>
#include <rfaas.h>

static int checks = 0;
static int rank = 0;

/* `rc` must be `want`, with a non-empty message that contains `needle` (when not NULL). */
static void expect(const char *what, int rc, int want, const char *needle) {
    const char *msg = rfaas_last_error();
    int ok = rc == want && msg != NULL;
    if (ok && want != RFAAS_STATUS_OK) ok = msg[0] != '\0';
    if (ok && needle != NULL) ok = strstr(msg, needle) != NULL;
    if (!ok) {
        fprintf(stderr, "FAILED (rank %d): %s: got %s (%d) \"%s\", want %s%s%s\n", rank, what,
                rfaas_status_name(rc), rc, msg ? msg : "(null)", rfaas_status_name(want),
                needle ? " containing " : "", needle ? needle : "");
        exit(1);
    }
    checks++;
    if (rank == 0) printf("ok: %s -> %s: %s\n", what, rfaas_status_name(rc), msg);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (argc != 3) {
        fprintf(stderr, "usage: %s CLUSTER_JSON LIBRARY\n", argv[0]);
        return 2;
    }
    const char *cluster_file = argv[1], *library = argv[2];

    /* --- the plain client ------------------------------------------------------------- */
    rfaas_cluster *cluster = NULL;
    expect("cluster_open(path, NULL)", rfaas_cluster_open(cluster_file, NULL),
           RFAAS_STATUS_NULL_POINTER, "out");
    expect("cluster_open(missing file)", rfaas_cluster_open("/nonexistent/cluster.json", &cluster),
           RFAAS_STATUS_CLUSTER, "/nonexistent/cluster.json");
    expect("cluster_open", rfaas_cluster_open(cluster_file, &cluster), RFAAS_STATUS_OK, NULL);

    rfaas_allocation_spec spec;
    expect("allocation_spec_init(NULL)", rfaas_allocation_spec_init(NULL),
           RFAAS_STATUS_NULL_POINTER, "spec");
    rfaas_allocation_spec_init(&spec);
    rfaas_executor *exec = NULL;
    expect("allocate(NULL cluster)", rfaas_allocate(NULL, &spec, &exec), RFAAS_STATUS_NULL_POINTER,
           "cluster");
    expect("allocate(no functions)", rfaas_allocate(cluster, &spec, &exec),
           RFAAS_STATUS_NULL_POINTER, "functions");
    spec.functions = "echo";
    expect("allocate(no library)", rfaas_allocate(cluster, &spec, &exec),
           RFAAS_STATUS_NULL_POINTER, "library");
    spec.library_path = "/nonexistent/libfunctions.so";
    expect("allocate(missing library)", rfaas_allocate(cluster, &spec, &exec),
           RFAAS_STATUS_CLUSTER, "/nonexistent/libfunctions.so");
    spec.library_path = library;
    spec.library = NULL;
    spec.library_len = 0;
    spec.cores = 0;
    expect("allocate(0 cores)", rfaas_allocate(cluster, &spec, &exec),
           RFAAS_STATUS_INVALID_ARGUMENT, "cores");
    spec.cores = 1;
    spec.slots = 1000;
    expect("allocate(1000 slots)", rfaas_allocate(cluster, &spec, &exec),
           RFAAS_STATUS_INVALID_ARGUMENT, "slots");
    spec.slots = 2;
    spec.input_capacity = 64;
    spec.output_capacity = 64;
    spec.hot_timeout_ms = 0;
    expect("allocate", rfaas_allocate(cluster, &spec, &exec), RFAAS_STATUS_OK, NULL);

    uint32_t id = 12345;
    expect("function(unknown name)", rfaas_function(exec, "no_such_function", &id),
           RFAAS_STATUS_UNKNOWN_FUNCTION, "no_such_function");
    expect("function(NULL executor)", rfaas_function(NULL, "echo", &id),
           RFAAS_STATUS_NULL_POINTER, "executor");
    expect("function(NULL name)", rfaas_function(exec, NULL, &id), RFAAS_STATUS_NULL_POINTER,
           "name");
    expect("function", rfaas_function(exec, "echo", &id), RFAAS_STATUS_OK, NULL);

    char in[128], out[128];
    memset(in, 'x', sizeof in);
    size_t n = 0;
    expect("invoke(NULL input, length 5)", rfaas_invoke(exec, id, NULL, 5, out, sizeof out, &n),
           RFAAS_STATUS_NULL_POINTER, "input");
    expect("invoke(NULL output, capacity 64)", rfaas_invoke(exec, id, in, 5, NULL, 64, &n),
           RFAAS_STATUS_NULL_POINTER, "output");
    /* The length given is longer than the allocation's input capacity. */
    expect("invoke(input longer than the capacity)",
           rfaas_invoke(exec, id, in, sizeof in, out, 64, &n), RFAAS_STATUS_INPUT_TOO_LARGE,
           "input capacity");
    /* echo returns 32 bytes; only 8 of room: an error, and nothing written. */
    memset(out, '#', sizeof out);
    expect("invoke(output capacity too small)", rfaas_invoke(exec, id, in, 32, out, 8, &n),
           RFAAS_STATUS_OUTPUT_TOO_SMALL, "output capacity");
    for (size_t i = 0; i < sizeof out; i++) {
        if (out[i] != '#') {
            fprintf(stderr, "FAILED: output byte %zu written after OUTPUT_TOO_SMALL\n", i);
            return 1;
        }
    }
    expect("invoke(function id 99)", rfaas_invoke(exec, 99, in, 4, out, 64, &n),
           RFAAS_STATUS_UNKNOWN_FUNCTION, NULL);
    expect("invoke(function id 70000)", rfaas_invoke(exec, 70000, in, 4, out, 64, &n),
           RFAAS_STATUS_UNKNOWN_FUNCTION, "70000");
    expect("invoke", rfaas_invoke(exec, id, "abcd", 4, out, 64, &n), RFAAS_STATUS_OK, NULL);
    if (n != 4 || memcmp(out, "abcd", 4) != 0) {
        fprintf(stderr, "FAILED: echo after the errors returned %zu bytes\n", n);
        return 1;
    }
    rfaas_pending *p = NULL;
    expect("submit(worker 7 of 1)", rfaas_submit(exec, id, in, 4, 64, 7, &p),
           RFAAS_STATUS_INVALID_ARGUMENT, "worker 7");
    expect("submit(NULL pending)", rfaas_submit(exec, id, in, 4, 64, -1, NULL),
           RFAAS_STATUS_NULL_POINTER, "pending");
    expect("wait_pending(NULL)", rfaas_wait_pending(exec, NULL, out, 64, &n), RFAAS_STATUS_NULL_POINTER,
           "pending");
    rfaas_pending *a = NULL, *b = NULL, *c = NULL;
    expect("submit 1 of 2 slots", rfaas_submit(exec, id, in, 4, 64, 0, &a), RFAAS_STATUS_OK, NULL);
    expect("submit 2 of 2 slots", rfaas_submit(exec, id, in, 4, 64, 0, &b), RFAAS_STATUS_OK, NULL);
    expect("submit(every slot busy)", rfaas_submit(exec, id, in, 4, 64, 0, &c), RFAAS_STATUS_BUSY,
           "busy");
    expect("wait 1", rfaas_wait_pending(exec, a, out, 64, &n), RFAAS_STATUS_OK, NULL);
    expect("wait 2", rfaas_wait_pending(exec, b, out, 64, &n), RFAAS_STATUS_OK, NULL);
    expect("deallocate", rfaas_deallocate(exec), RFAAS_STATUS_OK, NULL);
    expect("deallocate(NULL)", rfaas_deallocate(NULL), RFAAS_STATUS_OK, NULL);
    rfaas_cluster_close(cluster);

    /* --- the MPI session -------------------------------------------------------------- */
    rfaas_session_config cfg;
    rfaas_session_config_init(&cfg);
    cfg.cluster = cluster_file;
    cfg.library_path = library;
    cfg.functions = "echo";
    cfg.input_capacity = 64;
    cfg.output_capacity = 64;
    cfg.hot_timeout_ms = 0;
    rfaas_session *s = NULL;
    expect("session_init(MPI_COMM_NULL)", rfaas_session_init(MPI_COMM_NULL, &cfg, &s),
           RFAAS_STATUS_INVALID_ARGUMENT, "MPI_COMM_NULL");
    expect("session_init_f(a Fortran handle that is no communicator)",
           rfaas_session_init_f(-5, &cfg, &s), RFAAS_STATUS_INVALID_ARGUMENT, "MPI_COMM_NULL");
    expect("session_init(NULL config)", rfaas_session_init(MPI_COMM_WORLD, NULL, &s),
           RFAAS_STATUS_NULL_POINTER, "cfg");
    expect("session_init(NULL out)", rfaas_session_init(MPI_COMM_WORLD, &cfg, NULL),
           RFAAS_STATUS_NULL_POINTER, "out");
    expect("session_init", rfaas_session_init(MPI_COMM_WORLD, &cfg, &s), RFAAS_STATUS_OK, NULL);
    expect("offload(unknown function)",
           rfaas_offload(s, "no_such_function", in, 4, out, 64, &n), RFAAS_STATUS_UNKNOWN_FUNCTION,
           "no_such_function");
    rfaas_offload_pending *o = NULL;
    expect("offload_async(unknown function)",
           rfaas_offload_async(s, "no_such_function", in, 4, 64, &o),
           RFAAS_STATUS_UNKNOWN_FUNCTION, "no_such_function");
    expect("offload(NULL session)", rfaas_offload(NULL, "echo", in, 4, out, 64, &n),
           RFAAS_STATUS_NULL_POINTER, "session");
    expect("offload(NULL input, length 4)", rfaas_offload(s, "echo", NULL, 4, out, 64, &n),
           RFAAS_STATUS_NULL_POINTER, "input");
    expect("offload(output capacity too small)", rfaas_offload(s, "echo", in, 32, out, 8, &n),
           RFAAS_STATUS_OUTPUT_TOO_SMALL, "output capacity");
    expect("offload", rfaas_offload(s, "echo", "wxyz", 4, out, 64, &n), RFAAS_STATUS_OK, NULL);
    if (n != 4 || memcmp(out, "wxyz", 4) != 0) {
        fprintf(stderr, "FAILED: session echo returned %zu bytes\n", n);
        return 1;
    }
    expect("wait(NULL offload)", rfaas_wait(s, NULL, out, 64, &n),
           RFAAS_STATUS_NULL_POINTER, "offload");
    rfaas_session_report report;
    expect("session_finish", rfaas_session_finish(s, &report), RFAAS_STATUS_OK, NULL);
    expect("offload after finish", rfaas_offload(s, "echo", in, 4, out, 64, &n),
           RFAAS_STATUS_FINISHED, "finished");
    expect("offload_async after finish", rfaas_offload_async(s, "echo", in, 4, 64, &o),
           RFAAS_STATUS_FINISHED, "finished");
    expect("session_finish after finish", rfaas_session_finish(s, &report),
           RFAAS_STATUS_FINISHED, "finished");
    rfaas_session_free(s);
    rfaas_session_free(NULL);

    printf("bad_input: rank %d: %d checks passed\n", rank, checks);
    MPI_Finalize();
    return 0;
}
