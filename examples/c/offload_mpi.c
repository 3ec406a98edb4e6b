/* offload_mpi.c: Black-Scholes from an MPI application in C. Every rank prices its own batch of
 * European options on rfaas workers (several batches in flight, `black_scholes` of the example
 * function library) while it prices the same options locally, and checks the remote prices
 * against its local computation (written here independently, with erfc from libm).
 *
 *   mpicc -o offload_mpi offload_mpi.c $(pkg-config --cflags --libs rfaas) -lm
 *   mpirun -n 2 ./offload_mpi /tmp/rfaas/cluster.json target/release/libfunctions.so
 *
 * Arguments: CLUSTER_JSON LIBRARY [OPTIONS_PER_RANK [BATCH [HOT_TIMEOUT_MS]]].
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>
#include <rfaas.h>

enum { IN_FLIGHT = 2 };

/* One option in the function's input layout: spot, strike, rate, volatility, time (f64 LE). */
typedef struct {
    double spot, strike, rate, volatility, time;
} option_t;

static double phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

/* Call and put prices, from the textbook formulas. */
static void local_price(const option_t *o, double *call, double *put) {
    double df = o->strike * exp(-o->rate * o->time);
    double sst = o->volatility * sqrt(o->time);
    if (sst == 0.0) {
        *call = fmax(o->spot - df, 0.0);
        *put = fmax(df - o->spot, 0.0);
        return;
    }
    double d1 = (log(o->spot / o->strike) + (o->rate + 0.5 * o->volatility * o->volatility) * o->time) / sst;
    double d2 = d1 - sst;
    *call = o->spot * phi(d1) - df * phi(d2);
    *put = df * phi(-d2) - o->spot * phi(-d1);
}

/* A reproducible pseudo-random number in [lo, hi). */
static double uniform(unsigned long long *s, double lo, double hi) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

static int fail(int rank, const char *what, int rc) {
    fprintf(stderr, "offload_mpi: rank %d: %s: %s: %s\n", rank, what, rfaas_status_name(rc),
            rfaas_last_error());
    return rc;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 3) {
        if (rank == 0) fprintf(stderr, "usage: %s CLUSTER_JSON LIBRARY [OPTIONS [BATCH [HOT_TIMEOUT_MS]]]\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    long n = argc > 3 ? atol(argv[3]) : 20000;
    long batch = argc > 4 ? atol(argv[4]) : 1000;
    long long hot = argc > 5 ? atoll(argv[5]) : 100;
    if (n <= 0 || batch <= 0) {
        if (rank == 0) fprintf(stderr, "offload_mpi: OPTIONS and BATCH must be positive\n");
        MPI_Finalize();
        return 2;
    }

    option_t *opts = malloc(n * sizeof *opts);
    double *remote = malloc(n * 2 * sizeof *remote);
    unsigned long long seed = 12345 + 1000003ULL * (unsigned long long)rank;
    for (long i = 0; i < n; i++) {
        opts[i].spot = uniform(&seed, 50, 150);
        opts[i].strike = uniform(&seed, 50, 150);
        opts[i].rate = uniform(&seed, 0.0, 0.1);
        opts[i].volatility = uniform(&seed, 0.05, 0.6);
        opts[i].time = uniform(&seed, 0.1, 3.0);
    }

    rfaas_session_config cfg;
    rfaas_session_config_init(&cfg);
    cfg.cluster = argv[1];
    cfg.library_path = argv[2];
    cfg.functions = "black_scholes";
    cfg.cores_per_rank = 1;
    cfg.input_capacity = (uint32_t)(batch * sizeof(option_t));
    cfg.output_capacity = (uint32_t)(batch * 2 * sizeof(double));
    cfg.slots = IN_FLIGHT;
    cfg.hot_timeout_ms = hot;
    rfaas_session *session = NULL;
    double t0 = MPI_Wtime();
    int rc = rfaas_session_init(MPI_COMM_WORLD, &cfg, &session);
    if (rc != RFAAS_STATUS_OK) {
        fail(rank, "rfaas_session_init", rc);
        MPI_Finalize();
        return 1;
    }

    /* Offload every batch, IN_FLIGHT at a time; price the same options locally meanwhile. */
    long batches = (n + batch - 1) / batch;
    rfaas_offload_pending *inflight[IN_FLIGHT] = {0};
    long posted = 0, collected = 0, offloads = 0;
    double max_err = 0.0;
    long bad = 0;
    int err = 0;
    while (collected < batches && !err) {
        while (posted < batches && posted - collected < IN_FLIGHT) {
            long first = posted * batch, count = n - first < batch ? n - first : batch;
            rc = rfaas_offload_async(session, "black_scholes", &opts[first],
                                     count * sizeof(option_t), count * 2 * sizeof(double),
                                     &inflight[posted % IN_FLIGHT]);
            if (rc != RFAAS_STATUS_OK) { err = fail(rank, "rfaas_offload_async", rc); break; }
            posted++;
        }
        if (err) break;
        long first = collected * batch, count = n - first < batch ? n - first : batch;
        double local[2];
        size_t got = 0;
        rc = rfaas_wait(session, inflight[collected % IN_FLIGHT], &remote[2 * first],
                                count * 2 * sizeof(double), &got);
        if (rc != RFAAS_STATUS_OK) { err = fail(rank, "rfaas_wait", rc); break; }
        if (got != (size_t)count * 2 * sizeof(double)) {
            fprintf(stderr, "offload_mpi: rank %d: batch %ld: %zu bytes back\n", rank, collected, got);
            err = 1;
            break;
        }
        offloads++;
        for (long i = first; i < first + count; i++) {
            local_price(&opts[i], &local[0], &local[1]);
            for (int k = 0; k < 2; k++) {
                double e = fabs(remote[2 * i + k] - local[k]);
                if (e > max_err) max_err = e;
                if (!(e <= 1e-9 * fmax(1.0, fabs(local[k])))) bad++;
            }
        }
        collected++;
    }
    double elapsed = MPI_Wtime() - t0;

    rfaas_session_report report = {0};
    int frc = rfaas_session_finish(session, &report);
    if (frc != RFAAS_STATUS_OK) err = fail(rank, "rfaas_session_finish", frc);
    rfaas_session_free(session);

    printf("rank %d: %ld options, %ld offloads, %.3f s, max |error| %.2e: %s\n", rank, n,
           offloads, elapsed, max_err, (!err && bad == 0) ? "ok" : "WRONG");
    long flags[2] = {err != 0, bad}, all[2];
    MPI_Reduce(flags, all, 2, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    int status = 0;
    if (rank == 0) {
        if (report.is_root != 1) status = 1;
        printf("%d ranks, %llu offloads in the session report (p50 %llu ns), %ld wrong prices, "
               "%ld ranks failed: %s\n",
               size, (unsigned long long)report.invocations, (unsigned long long)report.p50_ns,
               all[1], all[0], (all[0] == 0 && all[1] == 0 && status == 0) ? "result correct on every rank" : "FAILED");
        if (all[0] != 0 || all[1] != 0) status = 1;
    }
    MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
    free(opts);
    free(remote);
    MPI_Finalize();
    return status;
}
