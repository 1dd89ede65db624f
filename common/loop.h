/* The io_uring event loop of one shard. This module alone includes liburing.
 * It owns the ring, the shard's provided receive buffers, a timer wheel and a
 * queue of deferred tasks; callers own the rb_op and rb_timer structs they
 * embed in their own objects (connections, listeners) and must keep them
 * alive until the completion that ends the operation has run.
 *
 * Threading: a loop is created, used and destroyed by one thread (the ring is
 * SINGLE_ISSUER + DEFER_TASKRUN when the kernel has them). Only
 * rb_loop_wake_remote may be called from another loop's thread. */
#ifndef RB_COMMON_LOOP_H
#define RB_COMMON_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/err.h"

typedef struct rb_loop rb_loop;

/* The object that embeds `member` (an rb_op, rb_task or rb_timer) at ptr. */
#define RB_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* A completion handler: res is cqe->res (negative errno on failure), flags
 * is cqe->flags (IORING_CQE_F_MORE = RB_LOOP_F_MORE, buffer id in the high
 * 16 bits when RB_LOOP_F_BUFFER). Embed an rb_op in the owning object and
 * recover the owner with container_of. */
typedef struct rb_op rb_op;
typedef void rb_op_fn(rb_op *op, int res, uint32_t flags);
struct rb_op {
    rb_op_fn *done;
};

#define RB_LOOP_F_BUFFER         (1u << 0) /* IORING_CQE_F_BUFFER */
#define RB_LOOP_F_MORE           (1u << 1) /* IORING_CQE_F_MORE */
#define RB_LOOP_BUFFER_ID(flags) ((uint16_t)((flags) >> 16))

/* Work to run on this loop's thread at the start of the next turn. */
typedef struct rb_task rb_task;
struct rb_task {
    void (*fn)(rb_task *task);
    rb_task *next;
};

/* A one-shot timer in the loop's wheel (granularity RB_LOOP_TICK_MS). */
typedef struct rb_timer rb_timer;
struct rb_timer {
    void (*fn)(rb_timer *timer);
    uint64_t deadline_ms;
    rb_timer *prev;
    rb_timer *next;
    uint32_t slot;
    bool armed;
};

#define RB_LOOP_TICK_MS 10

typedef struct rb_loop_options {
    uint32_t sq_entries;     /* submission queue size */
    uint32_t recv_buf_count; /* provided buffers (power of two) */
    uint32_t recv_buf_bytes; /* size of each */
} rb_loop_options;

/* Checks, on a throwaway ring, that the kernel has what ringbus needs
 * (io_uring itself, multishot accept and recv, provided buffer rings,
 * MSG_RING). Returns 0, or RB_EUNSUPPORTED / RB_ESYS with a message that
 * names what is missing and how to fix it. */
int rb_loop_probe(rb_err *err);

/* Creates a loop on the calling thread. */
int rb_loop_init(rb_loop **out, const rb_loop_options *opt, rb_err *err);
void rb_loop_deinit(rb_loop *loop);

/* The ring's fd, the target of rb_loop_wake_remote. */
int rb_loop_ring_fd(const rb_loop *loop);

/* Monotonic milliseconds, read once per turn. */
uint64_t rb_loop_now_ms(const rb_loop *loop);

/* CLOCK_MONOTONIC in milliseconds, read now (the clock of every loop; for
 * threads without one and for times taken between turns). */
uint64_t rb_clock_ms(void);
/* The same in nanoseconds (a vDSO read, no syscall). */
uint64_t rb_clock_ns(void);

/* Nanoseconds the loop spent outside its io_uring waits so far (written
 * by the loop's thread only). */
uint64_t rb_loop_busy_ns(const rb_loop *loop);

/* Runs one turn: submits queued entries, waits up to timeout_ms (0 = do not
 * wait, -1 = until something happens) for completions, runs them, then
 * expired timers, then deferred tasks. Returns 0 or RB_ESYS. */
int rb_loop_run_once(rb_loop *loop, int timeout_ms, rb_err *err);

/* Submissions. Each returns 0 (the op's done runs later, once per CQE) or
 * RB_ELIMIT when no submission entry could be had (done never runs then). */
int rb_loop_accept_multishot(rb_loop *loop, int fd, rb_op *op);
int rb_loop_recv_multishot(rb_loop *loop, int fd, rb_op *op);
int rb_loop_recv(rb_loop *loop, int fd, void *buf, size_t len, rb_op *op);
int rb_loop_sendmsg(rb_loop *loop, int fd, const struct msghdr *msg, rb_op *op);
int rb_loop_send(rb_loop *loop, int fd, const void *buf, size_t len, rb_op *op);
int rb_loop_poll(rb_loop *loop, int fd, uint32_t poll_mask, rb_op *op);
int rb_loop_read(rb_loop *loop, int fd, void *buf, size_t len, rb_op *op);
/* Cancels every operation on fd; their completions still run (-ECANCELED). */
int rb_loop_cancel_fd(rb_loop *loop, int fd, rb_op *op);
/* Cancels the one operation `target` (its completion still runs, with
 * -ECANCELED unless it finished first); other operations on its fd go on.
 * The cancel itself reports nothing. */
int rb_loop_cancel_op(rb_loop *loop, rb_op *target);
/* Closes fd through the ring (op may be NULL: no completion callback). */
int rb_loop_close(rb_loop *loop, int fd, rb_op *op);

/* Posts `data` to another loop: its rb_loop_set_remote_handler callback runs
 * there with data. Safe only from a loop thread. Returns 0 or RB_ELIMIT. */
int rb_loop_wake_remote(rb_loop *loop, int target_ring_fd, uint64_t data);
void rb_loop_set_remote_handler(rb_loop *loop, void (*fn)(void *ctx, uint64_t data), void *ctx);

/* Provided receive buffers: a multishot recv completion names a buffer id;
 * its bytes are the loop's until returned with rb_loop_buf_return. */
uint8_t *rb_loop_buf(rb_loop *loop, uint16_t buffer_id);
void rb_loop_buf_return(rb_loop *loop, uint16_t buffer_id);
uint32_t rb_loop_buf_bytes(const rb_loop *loop);

/* Deferred tasks run on this loop at the end of the current or next turn. */
void rb_loop_defer(rb_loop *loop, rb_task *task);

/* Timers. Arming an armed timer moves it. */
void rb_timer_arm(rb_loop *loop, rb_timer *timer, uint64_t delay_ms);
void rb_timer_disarm(rb_loop *loop, rb_timer *timer);

#endif
