/* pg_replay: replays one stored topic from cursor 0 to one subscriber over
 * libringbus (a history_only add), for the catch-up benchmark of
 * docs/BENCHMARKS.md ("Postgres"): it reads an existing topic, so that the
 * daemon and the plain libpq read (bench/pg_raw.c) replay the very same
 * rows in the same state.
 *
 *   pg_replay URL TOPIC
 *     prints rows, bytes, seconds and rows/s; checks seqs are 1, 2, 3, ...
 *
 * Build: see bench/pg_bench.sh. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "client/ringbus.h"

typedef struct replay {
    uint64_t rows;
    uint64_t bytes;
    uint64_t next_seq;
    bool done;
    bool failed;
} replay;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_event(const ringbus_event *ev, void *ctx)
{
    replay *r = ctx;
    if (ev->kind == RINGBUS_EVENT_MESSAGE) {
        if (ev->seq != r->next_seq) {
            fprintf(stderr, "pg_replay: seq %llu where %llu was due\n", (unsigned long long)ev->seq,
                    (unsigned long long)r->next_seq);
            r->failed = true;
        }
        r->next_seq = ev->seq + 1;
        r->rows++;
        r->bytes += ev->payload_len;
    } else if (ev->kind == RINGBUS_EVENT_CATCHUP_COMPLETE) {
        r->done = true;
    } else if (ev->kind == RINGBUS_EVENT_ERROR || ev->kind == RINGBUS_EVENT_CLOSED) {
        fprintf(stderr, "pg_replay: %s\n", ev->message != NULL ? ev->message : "closed");
        r->failed = true;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: pg_replay URL TOPIC\n");
        return 2;
    }
    replay r = {.next_seq = 1};
    ringbus_options opt;
    ringbus_options_init(&opt);
    opt.on_event = on_event;
    opt.event_ctx = &r;
    ringbus_conn *conn = NULL;
    ringbus_error err;
    if (ringbus_connect(argv[1], &opt, &conn, &err) != 0) {
        fprintf(stderr, "pg_replay: connect %s failed\n", argv[1]);
        return 1;
    }
    ringbus_add add = {.topic = argv[2], .cursor = 0};
    double t0 = now_s();
    if (ringbus_mutate(conn, 1, &add, 1, NULL, 0, true, &err) != 0) {
        fprintf(stderr, "pg_replay: mutate failed\n");
        return 1;
    }
    while (!r.done && !r.failed) {
        if (ringbus_process(conn, 1000, &err) < 0) {
            r.failed = true;
        }
    }
    double dt = now_s() - t0;
    ringbus_close(conn);
    printf("replay rows=%llu bytes=%llu seconds=%.3f rows_per_s=%.0f\n", (unsigned long long)r.rows,
           (unsigned long long)r.bytes, dt, (double)r.rows / dt);
    return r.failed ? 1 : 0;
}
