/* The shard event loop: one io_uring, its provided-buffer ring, a timer
 * wheel and a deferred-task queue. It dispatches each completion to the
 * rb_op named by the entry's user_data; it knows nothing of connections. */
#include "common/loop.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include "common/assert.h"
#include "common/limits.h"
#include "common/log.h"

/* Buffer group id of the loop's provided receive buffers. */
#define LOOP_BGID 0
/* Slots of the timer wheel: 4096 ticks of 10 ms span about 41 s; timers
 * further out stay in their slot and are re-checked when it comes round. */
#define WHEEL_SLOTS 4096u
/* A user_data with the low bit set is a message from another loop. */
#define REMOTE_TAG 1u

struct rb_loop {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    uint8_t *bufs;
    uint32_t buf_count;
    uint32_t buf_bytes;
    uint64_t now_ms;
    uint64_t woke_ns;    /* CLOCK_MONOTONIC when the last wait ended */
    uint64_t busy_ns;    /* time outside the waits */
    uint64_t wheel_tick; /* the next tick to process */
    uint32_t timer_count;
    rb_timer *wheel[WHEEL_SLOTS];
    rb_task *task_head;
    rb_task *task_tail;
    void (*remote_fn)(void *ctx, uint64_t data);
    void *remote_ctx;
};

uint64_t rb_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t rb_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *uring_init_hint(int res)
{
    switch (res) {
    case -EPERM:
        return "io_uring is disabled for this process (sysctl kernel.io_uring_disabled, or a "
               "seccomp filter such as a container's default profile); allow io_uring_setup, "
               "io_uring_enter and io_uring_register";
    case -ENOMEM:
        return "not enough locked memory for the rings; raise RLIMIT_MEMLOCK (ulimit -l, "
               "LimitMEMLOCK=infinity in the unit)";
    case -ENOSYS:
        return "this kernel has no io_uring; ringbusd needs Linux 6.0 or later";
    default:
        return "io_uring_setup failed";
    }
}

static int kernel_at_least(int major, int minor)
{
    struct utsname u;
    if (uname(&u) != 0) {
        return 0;
    }
    int ma = 0;
    int mi = 0;
    if (sscanf(u.release, "%d.%d", &ma, &mi) != 2) {
        return 0;
    }
    return ma > major || (ma == major && mi >= minor);
}

int rb_loop_probe(rb_err *err)
{
    struct io_uring ring;
    int res = io_uring_queue_init(8, &ring, 0);
    if (res < 0) {
        return rb_err_set(err, RB_EUNSUPPORTED, -res, "io_uring: %s (%s)", uring_init_hint(res),
                          strerror(-res));
    }
    struct io_uring_probe *probe = io_uring_get_probe_ring(&ring);
    if (probe == NULL) {
        io_uring_queue_exit(&ring);
        return rb_err_set(err, RB_EUNSUPPORTED, 0, "io_uring: the kernel cannot be probed");
    }
    static const struct {
        int op;
        const char *name;
    } need[] = {
        {IORING_OP_ACCEPT, "ACCEPT"},     {IORING_OP_RECV, "RECV"},
        {IORING_OP_SENDMSG, "SENDMSG"},   {IORING_OP_MSG_RING, "MSG_RING"},
        {IORING_OP_POLL_ADD, "POLL_ADD"}, {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
        {IORING_OP_CLOSE, "CLOSE"},       {IORING_OP_READ, "READ"},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        if (!io_uring_opcode_supported(probe, need[i].op)) {
            rc = rb_err_set(err, RB_EUNSUPPORTED, 0,
                            "io_uring: the kernel lacks IORING_OP_%s; ringbusd needs Linux 6.0 "
                            "or later",
                            need[i].name);
            break;
        }
    }
    io_uring_free_probe(probe);
    io_uring_queue_exit(&ring);
    if (rc == 0 && !kernel_at_least(6, 0)) {
        /* Multishot recv with provided buffer rings arrived in 6.0. */
        rc = rb_err_set(err, RB_EUNSUPPORTED, 0,
                        "io_uring: multishot recv and provided buffer rings need Linux 6.0 "
                        "or later");
    }
    return rc;
}

static int setup_ring(rb_loop *loop, uint32_t entries, rb_err *err)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    p.flags |= IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    int res = io_uring_queue_init_params(entries, &loop->ring, &p);
    if (res == -EINVAL) {
        /* Older kernels: fall back to a plain ring. */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 4;
        res = io_uring_queue_init_params(entries, &loop->ring, &p);
    }
    if (res < 0) {
        return rb_err_set(err, RB_EUNSUPPORTED, -res, "io_uring: %s (%s)", uring_init_hint(res),
                          strerror(-res));
    }
    return 0;
}

static int setup_bufs(rb_loop *loop, const rb_loop_options *opt, rb_err *err)
{
    RB_ASSERT(opt->recv_buf_count > 0);
    RB_ASSERT((opt->recv_buf_count & (opt->recv_buf_count - 1)) == 0);
    loop->buf_count = opt->recv_buf_count;
    loop->buf_bytes = opt->recv_buf_bytes;
    loop->br_bytes = loop->buf_count * sizeof(struct io_uring_buf);
    void *br =
        mmap(NULL, loop->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED) {
        return rb_err_set(err, RB_ESYS, errno, "io_uring: buffer ring mmap");
    }
    loop->br = br;
    loop->bufs = malloc((size_t)loop->buf_count * loop->buf_bytes);
    if (loop->bufs == NULL) {
        munmap(br, loop->br_bytes);
        return rb_err_set(err, RB_ENOMEM, 0, "io_uring: %u receive buffers", loop->buf_count);
    }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)br;
    reg.ring_entries = loop->buf_count;
    reg.bgid = LOOP_BGID;
    int res = io_uring_register_buf_ring(&loop->ring, &reg, 0);
    if (res < 0) {
        free(loop->bufs);
        munmap(br, loop->br_bytes);
        return rb_err_set(err, RB_EUNSUPPORTED, -res,
                          "io_uring: provided buffer rings unsupported (%s); ringbusd needs "
                          "Linux 6.0 or later",
                          strerror(-res));
    }
    io_uring_buf_ring_init(loop->br);
    int mask = io_uring_buf_ring_mask(loop->buf_count);
    for (uint32_t i = 0; i < loop->buf_count; i++) {
        io_uring_buf_ring_add(loop->br, loop->bufs + (size_t)i * loop->buf_bytes, loop->buf_bytes,
                              (unsigned short)i, mask, (int)i);
    }
    io_uring_buf_ring_advance(loop->br, (int)loop->buf_count);
    return 0;
}

int rb_loop_init(rb_loop **out, const rb_loop_options *opt, rb_err *err)
{
    rb_loop *loop = calloc(1, sizeof *loop);
    if (loop == NULL) {
        return rb_err_set(err, RB_ENOMEM, 0, "loop: allocation");
    }
    int rc = setup_ring(loop, opt->sq_entries, err);
    if (rc != 0) {
        goto undo_alloc;
    }
    rc = setup_bufs(loop, opt, err);
    if (rc != 0) {
        goto undo_ring;
    }
    loop->woke_ns = rb_clock_ns();
    loop->now_ms = loop->woke_ns / 1000000u;
    loop->wheel_tick = loop->now_ms / RB_LOOP_TICK_MS;
    *out = loop;
    return 0;
undo_ring:
    io_uring_queue_exit(&loop->ring);
undo_alloc:
    free(loop);
    return rc;
}

void rb_loop_deinit(rb_loop *loop)
{
    if (loop == NULL) {
        return;
    }
    io_uring_unregister_buf_ring(&loop->ring, LOOP_BGID);
    io_uring_queue_exit(&loop->ring);
    munmap(loop->br, loop->br_bytes);
    free(loop->bufs);
    free(loop);
}

int rb_loop_ring_fd(const rb_loop *loop)
{
    return loop->ring.ring_fd;
}

uint64_t rb_loop_now_ms(const rb_loop *loop)
{
    return loop->now_ms;
}

uint64_t rb_loop_busy_ns(const rb_loop *loop)
{
    return loop->busy_ns;
}

static struct io_uring_sqe *get_sqe(rb_loop *loop)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    if (sqe == NULL) {
        /* The submission queue is full: hand it to the kernel and retry. */
        io_uring_submit(&loop->ring);
        sqe = io_uring_get_sqe(&loop->ring);
    }
    return sqe;
}

int rb_loop_accept_multishot(rb_loop *loop, int fd, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int rb_loop_recv_multishot(rb_loop *loop, int fd, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = LOOP_BGID;
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int rb_loop_recv(rb_loop *loop, int fd, void *buf, size_t len, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_recv(sqe, fd, buf, len, 0);
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int rb_loop_sendmsg(rb_loop *loop, int fd, const struct msghdr *msg, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int rb_loop_send(rb_loop *loop, int fd, const void *buf, size_t len, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int rb_loop_poll(rb_loop *loop, int fd, uint32_t poll_mask, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_poll_add(sqe, fd, poll_mask);
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int rb_loop_read(rb_loop *loop, int fd, void *buf, size_t len, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_read(sqe, fd, buf, (unsigned)len, (uint64_t)-1);
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

int rb_loop_cancel_fd(rb_loop *loop, int fd, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data(sqe, op);
    if (op == NULL) {
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    }
    return 0;
}

int rb_loop_cancel_op(rb_loop *loop, rb_op *target)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_cancel(sqe, target, 0);
    io_uring_sqe_set_data(sqe, NULL);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    return 0;
}

int rb_loop_close(rb_loop *loop, int fd, rb_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data(sqe, op);
    if (op == NULL) {
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    }
    return 0;
}

int rb_loop_wake_remote(rb_loop *loop, int target_ring_fd, uint64_t data)
{
    RB_ASSERT(data < (1ull << 63));
    struct io_uring_sqe *sqe = get_sqe(loop);
    if (sqe == NULL) {
        return RB_ELIMIT;
    }
    io_uring_prep_msg_ring(sqe, target_ring_fd, 0, (data << 1) | REMOTE_TAG, 0);
    io_uring_sqe_set_data(sqe, NULL);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    return 0;
}

void rb_loop_set_remote_handler(rb_loop *loop, void (*fn)(void *ctx, uint64_t data), void *ctx)
{
    loop->remote_fn = fn;
    loop->remote_ctx = ctx;
}

uint8_t *rb_loop_buf(rb_loop *loop, uint16_t buffer_id)
{
    RB_ASSERT(buffer_id < loop->buf_count);
    return loop->bufs + (size_t)buffer_id * loop->buf_bytes;
}

void rb_loop_buf_return(rb_loop *loop, uint16_t buffer_id)
{
    RB_ASSERT(buffer_id < loop->buf_count);
    int mask = io_uring_buf_ring_mask(loop->buf_count);
    io_uring_buf_ring_add(loop->br, rb_loop_buf(loop, buffer_id), loop->buf_bytes, buffer_id, mask,
                          0);
    io_uring_buf_ring_advance(loop->br, 1);
}

uint32_t rb_loop_buf_bytes(const rb_loop *loop)
{
    return loop->buf_bytes;
}

void rb_loop_defer(rb_loop *loop, rb_task *task)
{
    task->next = NULL;
    if (loop->task_tail == NULL) {
        loop->task_head = task;
    } else {
        loop->task_tail->next = task;
    }
    loop->task_tail = task;
}

static void wheel_insert(rb_loop *loop, rb_timer *t)
{
    uint64_t tick = t->deadline_ms / RB_LOOP_TICK_MS;
    if (tick < loop->wheel_tick) {
        tick = loop->wheel_tick;
    }
    t->slot = (uint32_t)(tick % WHEEL_SLOTS);
    rb_timer **slot = &loop->wheel[t->slot];
    t->prev = NULL;
    t->next = *slot;
    if (*slot != NULL) {
        (*slot)->prev = t;
    }
    *slot = t;
}

static void wheel_remove(rb_loop *loop, rb_timer *t)
{
    if (t->prev != NULL) {
        t->prev->next = t->next;
    } else {
        rb_timer **slot = &loop->wheel[t->slot];
        RB_ASSERT(*slot == t);
        *slot = t->next;
    }
    if (t->next != NULL) {
        t->next->prev = t->prev;
    }
    t->prev = NULL;
    t->next = NULL;
}

void rb_timer_arm(rb_loop *loop, rb_timer *timer, uint64_t delay_ms)
{
    RB_ASSERT(timer->fn != NULL);
    if (timer->armed) {
        wheel_remove(loop, timer);
        loop->timer_count--;
    }
    timer->deadline_ms = loop->now_ms + delay_ms;
    timer->armed = true;
    wheel_insert(loop, timer);
    loop->timer_count++;
}

void rb_timer_disarm(rb_loop *loop, rb_timer *timer)
{
    if (!timer->armed) {
        return;
    }
    wheel_remove(loop, timer);
    timer->armed = false;
    loop->timer_count--;
}

static void run_slot(rb_loop *loop, uint32_t slot_index)
{
    rb_timer *t = loop->wheel[slot_index];
    while (t != NULL) {
        rb_timer *next = t->next;
        if (t->deadline_ms <= loop->now_ms) {
            wheel_remove(loop, t);
            t->armed = false;
            loop->timer_count--;
            t->fn(t);
            /* The callback may have disarmed or re-armed any timer, so the
             * slot is walked again from its head. */
            next = loop->wheel[slot_index];
        }
        t = next;
    }
}

static void run_timers(rb_loop *loop)
{
    uint64_t now_tick = loop->now_ms / RB_LOOP_TICK_MS;
    uint64_t ticks = now_tick + 1 - loop->wheel_tick;
    if (ticks > WHEEL_SLOTS) {
        ticks = WHEEL_SLOTS;
    }
    for (uint64_t i = 0; i < ticks; i++) {
        run_slot(loop, (uint32_t)((now_tick - i) % WHEEL_SLOTS));
    }
    loop->wheel_tick = now_tick;
}

static void run_tasks(rb_loop *loop)
{
    /* Only the tasks queued before this point run now, so a task that
     * defers another cannot keep the loop here forever. */
    rb_task *t = loop->task_head;
    loop->task_head = NULL;
    loop->task_tail = NULL;
    while (t != NULL) {
        rb_task *next = t->next;
        t->fn(t);
        t = next;
    }
}

static void dispatch(rb_loop *loop, struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    if (ud == 0) {
        if (cqe->res < 0 && cqe->res != -ECANCELED && cqe->res != -ENOENT) {
            RB_LOG_DEBUG(0, "loop: untracked operation failed: %s", strerror(-cqe->res));
        }
        return;
    }
    if ((ud & REMOTE_TAG) != 0) {
        if (loop->remote_fn != NULL) {
            loop->remote_fn(loop->remote_ctx, ud >> 1);
        }
        return;
    }
    rb_op *op = (rb_op *)(uintptr_t)ud;
    uint32_t flags = cqe->flags & 0xffff0000u;
    if ((cqe->flags & IORING_CQE_F_BUFFER) != 0) {
        flags |= RB_LOOP_F_BUFFER;
    }
    if ((cqe->flags & IORING_CQE_F_MORE) != 0) {
        flags |= RB_LOOP_F_MORE;
    }
    op->done(op, cqe->res, flags);
}

static void reap(rb_loop *loop)
{
    struct io_uring_cqe *cqe;
    uint32_t count = 0;
    while (count < RB_CQE_PER_TURN_MAX && io_uring_peek_cqe(&loop->ring, &cqe) == 0) {
        /* Copy and advance first: a handler may submit and enter the ring. */
        struct io_uring_cqe copy = *cqe;
        io_uring_cqe_seen(&loop->ring, cqe);
        dispatch(loop, &copy);
        count++;
    }
}

int rb_loop_run_once(rb_loop *loop, int timeout_ms, rb_err *err)
{
    if (loop->task_head != NULL) {
        timeout_ms = 0;
    }
    if (loop->timer_count > 0 && (timeout_ms < 0 || timeout_ms > RB_LOOP_TICK_MS)) {
        timeout_ms = RB_LOOP_TICK_MS;
    }
    int res;
    /* Busy time: from the end of a wait to the start of the next (a turn
     * that does not wait is busy to its end), one vDSO clock read more
     * per waiting turn. */
    if (timeout_ms != 0) {
        loop->busy_ns += rb_clock_ns() - loop->woke_ns;
    }
    if (timeout_ms == 0) {
        res = io_uring_submit_and_get_events(&loop->ring);
    } else if (timeout_ms < 0) {
        res = io_uring_submit_and_wait(&loop->ring, 1);
    } else {
        struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
                                       .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
        struct io_uring_cqe *cqe = NULL;
        res = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, &ts, NULL);
    }
    if (res < 0 && res != -ETIME && res != -EINTR && res != -EAGAIN && res != -EBUSY) {
        return rb_err_set(err, RB_ESYS, -res, "io_uring: submit and wait");
    }
    uint64_t woke = rb_clock_ns();
    if (timeout_ms == 0) {
        loop->busy_ns += woke - loop->woke_ns;
    }
    loop->woke_ns = woke;
    loop->now_ms = woke / 1000000u;
    /* At most RB_CQE_PER_TURN_MAX completions, then timers and tasks get
     * their turn; the rest are reaped next turn without waiting. */
    reap(loop);
    run_timers(loop);
    run_tasks(loop);
    return 0;
}
