"""The unit test run explains its own output: every "assertion failed" line
that a death test provokes comes after an "expected:" line naming that
test, and every death test registered in tests/unit/ prints one."""

import os
import re
import subprocess

from conftest import BUILD, ROOT

EXPECTED = re.compile(r"^unit_tests: expected: death test (\w+) aborts on the assertion below$")


def registered_death_tests():
    names = set()
    for path in sorted((ROOT / "tests" / "unit").glob("test_*.c")):
        names.update(re.findall(r"tcase_add_test_raise_signal\(\s*\w+,\s*(\w+),\s*SIGABRT",
                                path.read_text()))
    return names


def test_every_assertion_line_of_the_unit_run_is_labelled_expected():
    env = {k: v for k, v in os.environ.items() if k not in ("CK_RUN_SUITE", "CK_RUN_CASE")}
    out = subprocess.run([str(BUILD / "unit_tests")], capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stderr.splitlines()
    assert lines[0].startswith('unit_tests: death tests print "assertion failed" lines on purpose')
    # Each assertion line must follow its own "expected:" line (log lines of
    # the test may come between); one label covers one assertion.
    labelled, armed = set(), None
    for line in lines:
        m = EXPECTED.match(line)
        if m:
            armed = m.group(1)
        elif "assertion failed:" in line:
            assert armed, f"unlabelled assertion line: {line!r}"
            labelled.add(armed)
            armed = None
    death = registered_death_tests()
    assert death, "no death tests found"
    assert labelled == death, f"death tests without RB_DEATH_TEST(): {sorted(death - labelled)}"
