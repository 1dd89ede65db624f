/* A connection's transport stack: the layers between the socket and the
 * frame decoder. Plain tcp is the empty stack; tls is one layer; ws is one
 * layer; wss is tls under ws. Bytes from the socket enter the bottom layer
 * and leave the top one as frame bytes; frame bytes enter the top layer and
 * leave the bottom one as socket bytes. Each layer is an rb_layer_ops table.
 *
 * The stack owns its layers and frees them in rb_stack_deinit. Its owner (a
 * server connection) supplies the sinks at both ends and moves every byte:
 * nothing here does I/O, touches a ring or keeps a timer. Layers never call
 * the owner back from inside a sink call except through the sink itself, and
 * every output a layer makes is copied by the owner before the call
 * returns. A stack is used by one thread. */
#ifndef RB_TRANSPORTS_LAYER_H
#define RB_TRANSPORTS_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct rb_stack rb_stack;
typedef struct rb_layer rb_layer;

/* Layers per stack: tls and ws. */
#define RB_STACK_LAYERS_MAX 2

/* Socket bytes the owner encodes per send pass before it writes them, so a
 * long send queue is encoded in bounded steps (one sendmsg carries them). */
#define RB_STACK_WIRE_BYTES_PER_PASS (256u * 1024u)

/* How a layer ended the connection's input. */
typedef enum rb_layer_end {
    RB_LAYER_END_PEER = 1, /* the peer closed cleanly (TLS close_notify, WS Close) */
    RB_LAYER_END_DONE = 2, /* the layer answered on its own and is done (an HTTP reply) */
} rb_layer_end;

typedef struct rb_stack_sink {
    /* Frame bytes out of the top layer, valid during the call. Returns false
     * once the owner reads no more: the layers then stop decoding. */
    bool (*deliver)(void *owner, const uint8_t *p, size_t len);
    /* Socket bytes out of the bottom layer, copied before it returns.
     * Returns 0, or RB_ELIMIT when the owner has no buffer for them. */
    int (*wire)(void *owner, const uint8_t *p, size_t len);
    /* A layer ended the input cleanly (see rb_layer_end); `why` is for the
     * log. The owner closes: it flushes, then calls rb_stack_close. */
    void (*ended)(void *owner, rb_layer_end how, const char *why);
    void *owner;
} rb_stack_sink;

typedef struct rb_layer_ops {
    const char *name;
    /* Bytes from below (the socket or the layer under this one). Decoded
     * bytes go up with rb_layer_up, replies down with rb_layer_down.
     * Returns 0, or a negative RB_E code with err->cause an RB_WIRE_ code
     * (the status the owner closes with) and err->msg the reason. */
    int (*recv)(rb_layer *l, const uint8_t *p, size_t len, rb_err *err);
    /* Bytes from above (frame bytes, or the layer over this one) to encode
     * and pass down; the layer may hold them until flush. Same returns. */
    int (*send)(rb_layer *l, const uint8_t *p, size_t len, rb_err *err);
    /* Passes down whatever send held back. */
    int (*flush)(rb_layer *l, rb_err *err);
    /* Writes the layer's closing bytes (WS Close, TLS close_notify); the
     * status is the RB_WIRE_ code the connection closes with. After it the
     * layer sends nothing more. */
    void (*close)(rb_layer *l, uint16_t wire_status);
    /* True while frame bytes may pass (handshake done, not closed). */
    bool (*ready)(const rb_layer *l);
    void (*destroy)(rb_layer *l);
    /* Optional: the subject CN of the client certificate the handshake
     * verified (a client_ca listener), NUL-terminated in out; 0 = none. */
    size_t (*peer_cert_name)(const rb_layer *l, char *out, size_t cap);
} rb_layer_ops;

struct rb_layer {
    const rb_layer_ops *ops;
    rb_stack *stack;
    rb_layer *below; /* NULL: the socket */
    rb_layer *above; /* NULL: the frame decoder */
};

struct rb_stack {
    rb_layer *layers[RB_STACK_LAYERS_MAX]; /* [0] is next to the socket */
    uint32_t count;
    rb_stack_sink sink;
};

/* Makes an empty stack (plain tcp) that reports to sink. */
void rb_stack_init(rb_stack *s, const rb_stack_sink *sink);

/* Puts l on top of the stack, which owns it from now on. */
void rb_stack_push(rb_stack *s, rb_layer *l);

/* Destroys every layer; the stack is empty afterwards. */
void rb_stack_deinit(rb_stack *s);

static inline bool rb_stack_empty(const rb_stack *s)
{
    return s->count == 0;
}

/* Socket bytes in. Returns 0 or a layer's error (see recv). */
int rb_stack_recv(rb_stack *s, const uint8_t *p, size_t len, rb_err *err);

/* Frame bytes out: encoded and handed to the wire sink (perhaps at the
 * next rb_stack_flush). Only while rb_stack_ready. */
int rb_stack_send(rb_stack *s, const uint8_t *p, size_t len, rb_err *err);

/* Flushes every layer, top first. */
int rb_stack_flush(rb_stack *s, rb_err *err);

/* Closes every layer, top first (the WS Close travels inside TLS before
 * close_notify), and flushes what they wrote. */
void rb_stack_close(rb_stack *s, uint16_t wire_status);

/* True when every layer lets frame bytes pass. */
bool rb_stack_ready(const rb_stack *s);

/* For layers: passes decoded bytes up. Returns 0, or RB_ECLOSED when the
 * owner reads no more (the layer stops quietly), or the error of the layer
 * above. */
int rb_layer_up(rb_layer *l, const uint8_t *p, size_t len, rb_err *err);

/* For layers: passes encoded bytes down. Returns 0 or an error. */
int rb_layer_down(rb_layer *l, const uint8_t *p, size_t len, rb_err *err);

/* For layers: reports a clean end of input to the owner. */
void rb_layer_ended(rb_layer *l, rb_layer_end how, const char *why);

#endif
