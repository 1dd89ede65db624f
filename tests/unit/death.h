/* Death tests: a test registered with tcase_add_test_raise_signal(...,
 * SIGABRT) proves that an RB_ASSERT fires. The assertion still prints its
 * "ringbusd: assertion failed: ..." line on stderr, as it must in the
 * daemon; RB_DEATH_TEST() first prints an "expected:" line naming the test,
 * so that the assertion line reads as the test's point, not as a failure.
 * Every death test calls it first (tests/integration/test_unit_runner.py
 * checks that each registered one does). */
#ifndef RB_TESTS_UNIT_DEATH_H
#define RB_TESTS_UNIT_DEATH_H

/* Prints "unit_tests: expected: death test NAME aborts on the assertion
 * below" on stderr; fn is the test body's __func__ (NAME_fn). */
void rb_death_test_expect(const char *fn);

#define RB_DEATH_TEST() rb_death_test_expect(__func__)

#endif
