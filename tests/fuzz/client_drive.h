/* The libringbus side of the client fuzz targets: connect to the fake
 * server, queue a few publishes and a Mutate, then take events until the
 * connection closes, checking what the library promises its caller
 * (client/ringbus.h) whatever the server sent:
 * - connect fails with a known code and a message, or succeeds;
 * - every event is well formed: strings NUL-terminated at their length,
 *   topics 1..255 bytes, CLOSED the last event;
 * - every accepted publish's callback runs exactly once, with a seq only
 *   on success, by the time ringbus_close returns.
 * Header-only, shared by fuzz_client.c and fuzz_client_ws.c. */
#ifndef RB_FUZZ_CLIENT_DRIVE_H
#define RB_FUZZ_CLIENT_DRIVE_H

#include "client/ringbus.h"
#include "tests/fuzz/fake_server.h"

/* Events taken per input: a fuzz input is small, so a server that could
 * make the client produce more is a bug in the bound of the loop. */
#define DRIVE_EVENTS_MAX 4096
#define DRIVE_PUBLISHES  3

typedef struct drive_acks {
    unsigned calls[DRIVE_PUBLISHES + 1];
    unsigned accepted;
} drive_acks;

static void drive_ack(const ringbus_publish_result *res, void *ctx)
{
    drive_acks *a = ctx;
    FAKE_CHECK(res->corr_id >= 1 && res->corr_id <= DRIVE_PUBLISHES);
    a->calls[res->corr_id]++;
    FAKE_CHECK(res->message != NULL && res->topic != NULL);
    FAKE_CHECK(res->topic[res->topic_len] == '\0');
    if (res->status == 0) {
        FAKE_CHECK(res->topic_len >= 1 && res->topic_len <= 255);
    } else {
        FAKE_CHECK(res->status == RINGBUS_ESERVER || res->status == RINGBUS_ECLOSED);
    }
}

static void drive_check_event(const ringbus_event *ev)
{
    switch (ev->kind) {
    case RINGBUS_EVENT_MESSAGE:
        FAKE_CHECK(ev->topic != NULL && ev->topic_len >= 1 && ev->topic_len <= 255);
        FAKE_CHECK(ev->topic[ev->topic_len] == '\0');
        FAKE_CHECK(ev->payload != NULL || ev->payload_len == 0);
        break;
    case RINGBUS_EVENT_TOPICS_LIVE:
        for (size_t i = 0; i < ev->topic_count; i++) {
            size_t n = strlen(ev->topics[i]);
            FAKE_CHECK(n <= 255);
        }
        break;
    case RINGBUS_EVENT_CATCHUP_COMPLETE:
        break;
    case RINGBUS_EVENT_REQUEST:
        FAKE_CHECK(ev->method != NULL && strlen(ev->method) >= 1 && strlen(ev->method) <= 255);
        FAKE_CHECK(ev->caller != NULL && strlen(ev->caller) <= 255);
        FAKE_CHECK(ev->payload != NULL || ev->payload_len == 0);
        break;
    case RINGBUS_EVENT_RESPONSE:
        FAKE_CHECK(ev->message != NULL && strlen(ev->message) <= 65535);
        break;
    case RINGBUS_EVENT_TOPIC_ERROR:
        FAKE_CHECK(ev->topic != NULL && ev->topic_len >= 1 && ev->topic_len <= 255);
        FAKE_CHECK(ev->topic[ev->topic_len] == '\0');
        FAKE_CHECK(ev->message != NULL && strlen(ev->message) <= 65535);
        break;
    case RINGBUS_EVENT_LAGGED:
        FAKE_CHECK(ev->topic != NULL && ev->topic_len >= 1 && ev->topic_len <= 255);
        FAKE_CHECK(ev->topic[ev->topic_len] == '\0');
        FAKE_CHECK(ev->skipped >= 1);
        break;
    case RINGBUS_EVENT_ERROR:
    case RINGBUS_EVENT_CLOSED:
        FAKE_CHECK(ev->message != NULL && strlen(ev->message) < RINGBUS_ERROR_MESSAGE_BYTES);
        break;
    default:
        FAKE_CHECK(0);
    }
}

static void drive_connect_failed(int rc, const ringbus_error *err)
{
    FAKE_CHECK(rc < 0 && rc == err->code);
    FAKE_CHECK(rc == RINGBUS_EPROTO || rc == RINGBUS_ESERVER || rc == RINGBUS_ECLOSED ||
               rc == RINGBUS_ESYS || rc == RINGBUS_ETIMEDOUT || rc == RINGBUS_ENOMEM);
    FAKE_CHECK(err->message[0] != '\0');
    FAKE_CHECK(strnlen(err->message, sizeof err->message) < sizeof err->message);
}

static void drive_session(ringbus_conn *conn, drive_acks *acks)
{
    ringbus_error err;
    for (unsigned i = 0; i < DRIVE_PUBLISHES; i++) {
        uint64_t corr = 0;
        if (ringbus_publish(conn, "a", 1, "x", 1, &corr, &err, drive_ack, acks) == 0) {
            acks->accepted++;
            FAKE_CHECK(corr == acks->accepted);
        }
    }
    ringbus_add adds[2] = {{.topic = "a", .cursor = 0}, {.topic = "b", .is_now = true}};
    (void)ringbus_mutate(conn, 1, adds, 2, NULL, 0, false, &err);
    bool closed = false;
    for (int i = 0; i < DRIVE_EVENTS_MAX && !closed; i++) {
        ringbus_event ev;
        int rc = ringbus_next_event(conn, &ev, FAKE_WAIT_MS, &err);
        if (rc < 0) {
            FAKE_CHECK(rc == RINGBUS_ECLOSED && err.message[0] != '\0');
            break;
        }
        /* 0: nothing within FAKE_WAIT_MS, impossible once the server's
         * half-close has arrived. */
        FAKE_CHECK(rc == 1);
        drive_check_event(&ev);
        closed = ev.kind == RINGBUS_EVENT_CLOSED;
    }
    FAKE_CHECK(closed);
}

/* Runs one input against libringbus at url; job says what the server does. */
static void drive(const char *scheme, fake_job *job)
{
    pthread_t th;
    fake_start(&th, job);
    char url[64];
    snprintf(url, sizeof url, "%s://127.0.0.1:%u", scheme, fake_port);
    ringbus_options o;
    ringbus_options_init(&o);
    o.connect_timeout_ms = FAKE_WAIT_MS;
    o.request_timeout_ms = FAKE_WAIT_MS;
    o.publish_window = 4;
    o.event_queue_bytes = 1u << 20;
    ringbus_conn *conn = NULL;
    ringbus_error err;
    memset(&err, 0, sizeof err);
    int rc = ringbus_connect(url, &o, &conn, &err);
    drive_acks acks;
    memset(&acks, 0, sizeof acks);
    if (rc != 0) {
        FAKE_CHECK(conn == NULL);
        drive_connect_failed(rc, &err);
    } else {
        FAKE_CHECK(ringbus_max_frame_bytes(conn) >= 1);
        FAKE_CHECK(strlen(ringbus_server_id(conn)) <= 255);
        drive_session(conn, &acks);
        ringbus_close(conn);
        for (unsigned i = 1; i <= DRIVE_PUBLISHES; i++) {
            FAKE_CHECK(acks.calls[i] == (i <= acks.accepted ? 1u : 0u));
        }
    }
    pthread_join(th, NULL);
}

#endif
