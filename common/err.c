/* rb_err helpers: formatting and names. */
#include "common/err.h"

#include <stdio.h>
#include <string.h>

int rb_err_set(rb_err *err, int code, int cause, const char *fmt, ...)
{
    if (err == NULL) {
        return code;
    }
    err->code = code;
    err->cause = cause;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    if (code == RB_ESYS && cause != 0 && n >= 0 && (size_t)n < sizeof err->msg) {
        char tmp[128];
        /* GNU strerror_r returns a pointer that may or may not be tmp. */
        const char *why = strerror_r(cause, tmp, sizeof tmp);
        snprintf(err->msg + n, sizeof err->msg - (size_t)n, ": %s", why);
    }
    return code;
}

void rb_err_clear(rb_err *err)
{
    err->code = 0;
    err->cause = 0;
    err->msg[0] = '\0';
}

const char *rb_err_code_name(int code)
{
    switch (code) {
    case RB_OK:
        return "OK";
    case RB_ESYS:
        return "ESYS";
    case RB_EINVAL:
        return "EINVAL";
    case RB_ELIMIT:
        return "ELIMIT";
    case RB_EPROTO:
        return "EPROTO";
    case RB_ECLOSED:
        return "ECLOSED";
    case RB_ENOMEM:
        return "ENOMEM";
    case RB_ECONFIG:
        return "ECONFIG";
    case RB_EUNSUPPORTED:
        return "EUNSUPPORTED";
    case RB_EAGAIN:
        return "EAGAIN";
    case RB_ETIMEDOUT:
        return "ETIMEDOUT";
    case RB_ESTORAGE:
        return "ESTORAGE";
    case RB_ERANGE:
        return "ERANGE";
    default:
        return "EUNKNOWN";
    }
}
