/* Assertions: RB_ASSERT is always compiled in and aborts after logging file,
 * line and expression; RB_ASSERT_SLOW holds costly checks for test builds
 * (compiled when RB_SLOW_CHECKS is defined). */
#ifndef RB_COMMON_ASSERT_H
#define RB_COMMON_ASSERT_H

_Noreturn void rb_assert_fail(const char *file, int line, const char *expr);

#define RB_ASSERT(expr)                                                                            \
    do {                                                                                           \
        if (__builtin_expect(!(expr), 0)) {                                                        \
            rb_assert_fail(__FILE__, __LINE__, #expr);                                             \
        }                                                                                          \
    } while (0)

#ifdef RB_SLOW_CHECKS
#define RB_ASSERT_SLOW(expr) RB_ASSERT(expr)
#else
#define RB_ASSERT_SLOW(expr) ((void)0)
#endif

#endif
