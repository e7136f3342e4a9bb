"""Every ``>>>`` example in the package runs, one test per module (the only doctest collector).

Examples run from the repository root, since some name files such as ``examples/suites/...``.
Those that need the real model or a server carry ``# doctest: +SKIP``; a module whose examples
are all skipped still has to show them to the finder. Modules are found by walking the package,
so a new module's examples run without anyone listing it here.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import guardrail

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["guardrail", *sorted(m.name for m in pkgutil.walk_packages(guardrail.__path__, "guardrail."))]
#: A line that starts an example, as doctest itself recognises it.
EXAMPLE_LINE = re.compile(r"^\s*>>>( |$)", re.MULTILINE)


@pytest.mark.parametrize("name", MODULES)
def test_examples_hold(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    found = sum(len(test.examples) for test in tests)
    written = len(EXAMPLE_LINE.findall(inspect.getsource(module)))
    assert found == written, (f"{name} has {written} '>>>' lines but doctest finds {found} examples: one sits "
                              "where the finder does not look (a comment, a string that is not a docstring)")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} example(s) failed in {name}; the diff is printed above"


def test_the_public_entry_points_have_examples_that_run() -> None:
    """The examples of ``Guard``, ``guard``, ``Result`` and the package docstring are real, not skipped."""
    for name in ("guardrail", "guardrail.guard", "guardrail.result"):
        module = importlib.import_module(name)
        examples = [e for t in doctest.DocTestFinder().find(module) for e in t.examples]
        assert examples and not all(e.options.get(doctest.SKIP) for e in examples), name
