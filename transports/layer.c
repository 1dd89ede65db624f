/* The transport stack: links layers to each other and to the owner's
 * sinks. The layers themselves live in tls.c and ws.c. */
#include "transports/layer.h"

#include <string.h>

#include "common/assert.h"
#include "common/frame.h"

void rb_stack_init(rb_stack *s, const rb_stack_sink *sink)
{
    memset(s, 0, sizeof *s);
    s->sink = *sink;
}

void rb_stack_push(rb_stack *s, rb_layer *l)
{
    RB_ASSERT(s->count < RB_STACK_LAYERS_MAX);
    RB_ASSERT(l->ops != NULL);
    l->stack = s;
    l->above = NULL;
    l->below = s->count > 0 ? s->layers[s->count - 1] : NULL;
    if (l->below != NULL) {
        l->below->above = l;
    }
    s->layers[s->count++] = l;
}

void rb_stack_deinit(rb_stack *s)
{
    while (s->count > 0) {
        rb_layer *l = s->layers[--s->count];
        s->layers[s->count] = NULL;
        l->ops->destroy(l);
    }
}

int rb_stack_recv(rb_stack *s, const uint8_t *p, size_t len, rb_err *err)
{
    RB_ASSERT(s->count > 0);
    int rc = s->layers[0]->ops->recv(s->layers[0], p, len, err);
    /* The owner stopping to read is not an error of the stack. */
    return rc == RB_ECLOSED ? 0 : rc;
}

int rb_stack_send(rb_stack *s, const uint8_t *p, size_t len, rb_err *err)
{
    RB_ASSERT(s->count > 0);
    rb_layer *top = s->layers[s->count - 1];
    return top->ops->send(top, p, len, err);
}

int rb_stack_flush(rb_stack *s, rb_err *err)
{
    for (uint32_t i = s->count; i-- > 0;) {
        int rc = s->layers[i]->ops->flush(s->layers[i], err);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

void rb_stack_close(rb_stack *s, uint16_t wire_status)
{
    for (uint32_t i = s->count; i-- > 0;) {
        rb_layer *l = s->layers[i];
        rb_err err;
        /* What an upper layer wrote goes out before this layer closes. */
        if (l->ops->flush(l, &err) == 0) {
            l->ops->close(l, wire_status);
        }
    }
}

bool rb_stack_ready(const rb_stack *s)
{
    for (uint32_t i = 0; i < s->count; i++) {
        if (!s->layers[i]->ops->ready(s->layers[i])) {
            return false;
        }
    }
    return true;
}

int rb_layer_up(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    if (l->above != NULL) {
        return l->above->ops->recv(l->above, p, len, err);
    }
    rb_stack_sink *sink = &l->stack->sink;
    return sink->deliver(sink->owner, p, len) ? 0 : RB_ECLOSED;
}

int rb_layer_down(rb_layer *l, const uint8_t *p, size_t len, rb_err *err)
{
    if (l->below != NULL) {
        return l->below->ops->send(l->below, p, len, err);
    }
    rb_stack_sink *sink = &l->stack->sink;
    int rc = sink->wire(sink->owner, p, len);
    if (rc != 0) {
        return rb_err_set(err, rc, RB_WIRE_RESOURCE_EXHAUSTED, "no send buffer for %zu bytes", len);
    }
    return 0;
}

void rb_layer_ended(rb_layer *l, rb_layer_end how, const char *why)
{
    rb_stack_sink *sink = &l->stack->sink;
    sink->ended(sink->owner, how, why);
}
