/* Error values shared by every module: a negative RB_E code, the low-level
 * cause (errno, -cqe->res or a library's own code) and a human message that
 * says what failed, on what, and why. Logging the error is left to the caller
 * that decides it. */
#ifndef RB_COMMON_ERR_H
#define RB_COMMON_ERR_H

#include <stdarg.h>

/* Long enough for "what failed on what: why" with a path or an address. */
#define RB_ERR_MSG_BYTES_MAX 256

enum {
    RB_OK = 0,
    RB_ESYS = -1,         /* a system call failed; cause is errno */
    RB_EINVAL = -2,       /* a caller passed something malformed */
    RB_ELIMIT = -3,       /* a named limit or an empty pool refused the work */
    RB_EPROTO = -4,       /* the peer broke the protocol; cause is an RB_WIRE_ code */
    RB_ECLOSED = -5,      /* the connection or object is closing */
    RB_ENOMEM = -6,       /* allocation failed at set-up */
    RB_ECONFIG = -7,      /* the configuration is invalid */
    RB_EUNSUPPORTED = -8, /* the kernel or a library lacks a feature */
    RB_EAGAIN = -9,       /* not enough input yet; try again with more */
    RB_ETIMEDOUT = -10,   /* a deadline passed */
    RB_ESTORAGE = -11,    /* the storage backend failed */
    RB_ERANGE = -12,      /* a value (a cursor, a count) is outside what exists */
};

typedef struct rb_err {
    int code;  /* RB_E..., negative; 0 means none */
    int cause; /* errno, -cqe->res, or the library's code */
    char msg[RB_ERR_MSG_BYTES_MAX];
} rb_err;

/* Fills *err (when err is not NULL) and returns code, so that a caller can
 * write `return rb_err_set(err, RB_ESYS, errno, "tcp listen %s: bind", a)`.
 * For RB_ESYS with a nonzero cause, ": strerror(cause)" is appended. */
int rb_err_set(rb_err *err, int code, int cause, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Resets *err to "no error". */
void rb_err_clear(rb_err *err);

/* The stable name of an RB_E code ("ESYS", ...), for logs and tests. */
const char *rb_err_code_name(int code);

#endif
