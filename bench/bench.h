/* `ringbus bench`: a load generator and its measurements (throughput,
 * fan-out, latency corrected for coordinated omission, catch-up replay,
 * idle-connection memory), independent of the protocol it drives. The
 * protocol is a driver: this module ships the ringbus driver (over
 * libringbus); bench/peerload.c adds NATS, JetStream and Redis drivers so
 * that every system is measured by the same code. Connections are
 * poll-driven, one thread per connection group (publishers, subscribers);
 * the hot loop does not allocate. */
#ifndef RB_BENCH_BENCH_H
#define RB_BENCH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where a driver reports what happens on one connection. Owned by the
 * bench engine; a driver keeps the pointer it got in connect for the
 * connection's life and calls the functions below from the thread that
 * called into the driver. */
typedef struct rb_bench_sink rb_bench_sink;

/* A message was delivered to a subscriber. payload is borrowed for the
 * call. */
void rb_bench_sink_message(rb_bench_sink *sink, const void *payload, size_t len);

/* ok_count publishes were acknowledged and err_count refused. */
void rb_bench_sink_acked(rb_bench_sink *sink, uint64_t ok_count, uint64_t err_count);

/* A subscription (or replay) is complete: live for subscribe, the whole
 * history delivered for replay. */
void rb_bench_sink_complete(rb_bench_sink *sink);

/* The connection failed or was closed; why is copied. */
void rb_bench_sink_closed(rb_bench_sink *sink, const char *why);

/* Driver results. */
enum {
    RB_BENCH_OK = 0,
    RB_BENCH_FULL = 1,  /* publish: the window or send buffer is full; process, retry */
    RB_BENCH_FAIL = -1, /* why says what failed */
};

/* One protocol. Every call that may block takes a deadline (CLOCK_MONOTONIC
 * nanoseconds) and fails with a message in why[why_bytes] when it passes.
 * conn is the driver's own connection object. */
typedef struct rb_bench_driver {
    const char *system; /* reported name: "ringbus", "nats", "nats-js", "redis" */
    /* Optional (NULL): set up / tear down server state for topics under
     * prefix (a JetStream stream). cleanup is best effort. */
    int (*prepare)(const char *url, const char *prefix, int64_t deadline_ns, char *why,
                   size_t why_bytes);
    void (*cleanup)(const char *url, const char *prefix, int64_t deadline_ns);
    /* Connects and completes the handshake. window bounds publishes in
     * flight. On success stores the connection in *conn. */
    int (*connect)(const char *url, uint32_t window, int64_t deadline_ns, rb_bench_sink *sink,
                   void **conn, char *why, size_t why_bytes);
    /* Subscribes to topics from now on and waits until they are live. */
    int (*subscribe)(void *conn, const char *const *topics, uint32_t topic_count,
                     int64_t deadline_ns, char *why, size_t why_bytes);
    /* Optional (NULL when the system keeps no history): starts replaying
     * topic from its first stored message without waiting; the sink gets
     * the messages, then complete. */
    int (*replay)(void *conn, const char *topic, char *why, size_t why_bytes);
    /* Queues one publish without waiting: RB_BENCH_OK, RB_BENCH_FULL or
     * RB_BENCH_FAIL. The ack reaches the sink later. */
    int (*publish)(void *conn, const char *topic, size_t topic_len, const void *payload,
                   size_t len);
    /* Writes queued output once, without blocking. */
    int (*flush)(void *conn);
    int (*fd)(void *conn);
    bool (*want_write)(void *conn);
    /* Reads what is available without blocking and reports it to the sink.
     * RB_BENCH_FAIL once the connection is closed. */
    int (*process)(void *conn);
    void (*close)(void *conn);
} rb_bench_driver;

/* The ringbus driver, over libringbus. */
extern const rb_bench_driver rb_bench_ringbus_driver;

/* Runs `bench MODE [OPTIONS]` (argv[0] is the mode) with drv against url
 * (--url in argv overrides it) and prints the figures on stdout (errors on
 * stderr). Not reentrant: one run per process at a time. Returns an exit
 * status: 0 success, 1 a runtime failure or an incomplete run (loss,
 * disorder, deadline), 2 a usage error. */
int rb_bench_main(const rb_bench_driver *drv, const char *url, int argc, char **argv);

/* `ringbus bench` as the CLI dispatches it: rb_bench_main with the ringbus
 * driver. */
int rb_bench_cli(int argc, char **argv, const char *url);

/* TLS settings of the ringbus driver's connections (tls, wss, quic): the
 * CA file (NULL: the system store) and whether to skip verification, as
 * the CLI's --ca and --insecure. The strings are borrowed for the run. */
void rb_bench_set_tls(const char *ca_file, bool insecure, int tls_library);

/* The Origin header the ringbus driver's ws and wss connections send, as
 * the CLI's --origin (NULL: none). Borrowed for the run. */
void rb_bench_set_ws_origin(const char *origin);
/* Every bench connection signs in with these (the CLI's --token,
 * --token-file, --user/--password-file, --cert/--key); NULL = none. The
 * strings are borrowed for the run. */
void rb_bench_set_sign_in(const char *token, const char *user, const char *password,
                          size_t password_len, const char *cert_file, const char *key_file);

/* The usage text of the bench options (static). */
const char *rb_bench_usage(void);

#endif
