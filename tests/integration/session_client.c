/* A libringbus program on the resilient session, for test_resilient.py:
 * the event callback, the session's one fd in its own poll loop, and a
 * cursor store in a file. It follows TOPIC until it has printed COUNT
 * messages ("seq payload" lines), starting from the cursor the store holds
 * (0 when none), and saves every delivered cursor as "TOPIC SEQ EPOCH".
 *
 *   session_client URL STORE_FILE TOPIC COUNT */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ringbus.h"

typedef struct app {
    const char *store;
    long want, got;
    int loads, saves;
} app;

static bool load(const char *topic, uint64_t *cursor, uint64_t *epoch, void *ctx)
{
    app *a = ctx;
    a->loads++;
    FILE *f = fopen(a->store, "r");
    char name[256];
    bool found = false;
    if (f != NULL) {
        found = fscanf(f, "%255s %" SCNu64 " %" SCNu64, name, cursor, epoch) == 3 &&
                strcmp(name, topic) == 0;
        fclose(f);
    }
    return found;
}

static void save(const char *topic, uint64_t seq, uint64_t epoch, void *ctx)
{
    app *a = ctx;
    a->saves++;
    FILE *f = fopen(a->store, "w");
    if (f != NULL) {
        fprintf(f, "%s %" PRIu64 " %" PRIu64 "\n", topic, seq, epoch);
        fclose(f);
    }
}

static void on_event(const ringbus_event *ev, void *ctx)
{
    app *a = ctx;
    if (ev->kind == RINGBUS_EVENT_MESSAGE) {
        printf("%" PRIu64 " %.*s\n", ev->seq, (int)ev->payload_len, (const char *)ev->payload);
        a->got++;
    } else if (ev->kind == RINGBUS_EVENT_ERROR || ev->kind == RINGBUS_EVENT_TOPIC_ERROR ||
               ev->kind == RINGBUS_EVENT_CLOSED) {
        fprintf(stderr, "event %d: %s: %s\n", ev->kind, ringbus_wire_code_name(ev->code),
                ev->message);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: session_client URL STORE_FILE TOPIC COUNT\n");
        return 2;
    }
    app a = {.store = argv[2], .want = atol(argv[4])};
    const char *urls[] = {argv[1]};
    ringbus_session_options o;
    ringbus_session_options_init(&o);
    o.urls = urls;
    o.url_count = 1;
    o.on_event = on_event;
    o.event_ctx = &a;
    o.cursor_load = load;
    o.cursor_save = save;
    o.cursor_ctx = &a;
    ringbus_session *s = NULL;
    ringbus_error err;
    if (ringbus_session_open(&o, &s, &err) != 0) {
        fprintf(stderr, "open: %s\n", err.message);
        return 1;
    }
    ringbus_add add = {.topic = argv[3], .cursor = 0};
    if (ringbus_session_mutate(s, 1, 0, &add, 1, NULL, 0, false, &err) != 0) {
        fprintf(stderr, "mutate: %s\n", err.message);
        return 1;
    }
    while (a.got < a.want) {
        struct pollfd pfd = {.fd = ringbus_session_fd(s), .events = POLLIN};
        if (poll(&pfd, 1, 20000) == 0) {
            fprintf(stderr, "timed out with %ld of %ld messages\n", a.got, a.want);
            return 1;
        }
        if (ringbus_session_process(s, 0, &err) < 0) {
            fprintf(stderr, "process: %s\n", err.message);
            return 1;
        }
    }
    uint64_t seq = 0;
    ringbus_session_cursor(s, argv[3], &seq, NULL);
    fprintf(stderr, "loads %d saves %d cursor %" PRIu64 "\n", a.loads, a.saves, seq);
    ringbus_session_close(s);
    return 0;
}
