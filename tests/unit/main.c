/* The unit test runner: every suite that a tests/unit/test_*.c file defines
 * (listed in the generated suites.h) runs in one forking Check runner. An
 * optional argument runs only the suites whose name contains it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/unit/death.h"

void rb_death_test_expect(const char *fn)
{
    size_t len = strlen(fn);
    /* Check names a test's body NAME_fn. */
    if (len > 3 && strcmp(fn + len - 3, "_fn") == 0) {
        len -= 3;
    }
    fprintf(stderr, "unit_tests: expected: death test %.*s aborts on the assertion below\n",
            (int)len, fn);
}

#define X(fn) Suite *fn(void);
#include "suites.h"
#undef X

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    /* Check's per-test timeout catches hangs, not slowness: on a shared
     * machine, or under ASan, the 4 s default is too tight for the suites
     * that walk their limits. The environment may still set its own. */
    setenv("CK_TIMEOUT_MULTIPLIER", "5", 0);
    SRunner *sr = NULL;
#define X(fn)                                                                                      \
    if (only == NULL || strstr(#fn, only) != NULL) {                                               \
        if (sr == NULL) {                                                                          \
            sr = srunner_create(fn());                                                             \
        } else {                                                                                   \
            srunner_add_suite(sr, fn());                                                           \
        }                                                                                          \
    }
#include "suites.h"
#undef X
    if (sr == NULL) {
        return EXIT_FAILURE;
    }
    fputs("unit_tests: death tests print \"assertion failed\" lines on purpose, each after an "
          "\"expected:\" line\n",
          stderr);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
