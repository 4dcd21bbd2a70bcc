"""pytest plugin: `.edit` specs as test files, one test per check, failures at the spec line.

Registered through the `pytest11` entry point, so installing editspec is enough.  A `.edit`
file is collected only when it was asked for: named on the command line (`pytest specs/`,
`pytest specs/examples/capitals.edit`) or with `--editspec` (collect every spec below the
test paths).  A plain `pytest` run of a project's own tests never touches its specs.  Paths
matching the `editspec_exclude` ini globs (e.g. deliberately broken specs) are skipped.

What is verified: the edit from `--editspec-artifact DIR`, or a fresh compile with
`--editspec-backend B`, or else the unedited model.  The model is `--editspec-model`, else
the spec's `model`, else the default; each model is loaded once per session.

A check that fails while its metric's `expect` line still holds is reported as xfail (the
spec allows it); a failing check with no expectation to absorb it, and each failing
expectation, fail.

    pytest specs/examples/capitals.edit --editspec-artifact build/capitals.rome
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("editspec", "verifying .edit specs")
    group.addoption("--editspec", action="store_true", default=False,
                    help="Collect every .edit file below the test paths (by default only those named).")
    group.addoption("--editspec-artifact", metavar="DIR", help="Verify this compiled artifact.")
    group.addoption("--editspec-backend", metavar="B", help="Compile each spec with backend B, then verify.")
    group.addoption("--editspec-model", metavar="M", help="The model (default: the spec's, else smollm2-135m).")
    group.addoption("--editspec-protocol", metavar="P", help="Protocol of the fact checks (see `editspec verify`).")
    group.addoption("--editspec-chat", choices=("auto", "off"), default="auto",
                    help="Chat checks beside the default ones: auto when the model has a chat template (default), off.")
    parser.addini("editspec_exclude", "glob patterns (relative to rootdir) of .edit files never collected",
                  type="linelist", default=[])


def _requested(config, path: Path) -> bool:
    if config.getoption("editspec"):
        return True
    for arg in config.args:
        named = Path(str(arg).split("::")[0]).resolve()
        if path == named or named in path.parents:
            return True
    return False


def _excluded(config, path: Path) -> bool:
    try:
        relative = path.relative_to(config.rootpath).as_posix()
    except ValueError:
        relative = path.as_posix()
    return any(fnmatch.fnmatch(relative, pattern) for pattern in config.getini("editspec_exclude"))


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix != ".edit":
        return None
    config = parent.config
    path = file_path.resolve()
    if _excluded(config, path) or not _requested(config, path):
        return None
    return SpecFile.from_parent(parent, path=file_path)


_MODELS: dict = {}


def _loaded(name):
    from editspec.model.loading import load_model

    if name not in _MODELS:
        _MODELS[name] = load_model(name)
    return _MODELS[name]


class SpecError(Exception):
    """A spec that cannot be loaded or verified: shown as its diagnostics, not a traceback."""


class SpecFile(pytest.File):
    """One `.edit` file: loads the spec, yields one item per check and per expectation."""

    _report = None

    def _spec(self):
        from editspec.errors import EditspecError
        from editspec.lang.resolve import load_spec

        try:
            return load_spec(str(self.path))
        except EditspecError as error:
            raise SpecError(error.render()) from None

    def _model_name(self):
        from editspec.model.loading import model_choice

        return model_choice(self.config.getoption("editspec_model"), self.spec)

    def collect(self):
        from editspec.verify.checks import derive_checks
        from editspec.model.chat import chat_enabled

        spec = self._spec()
        self.spec = spec
        option = self.config.getoption
        # The chat checks exist only for a model with a chat template: ask its tokenizer.
        chat = option("editspec_chat") != "off" and chat_enabled(_loaded(self._model_name()).tokenizer)
        for check in derive_checks(spec, protocol=option("editspec_protocol"), chat=chat):
            yield CheckItem.from_parent(self, name=check.id, check=check)
        for i, e in enumerate(spec.expect):
            yield ExpectationItem.from_parent(self, name=f"expect {e.label} {e.comparator} {e.value:g}", index=i)

    def report(self):
        """The verification of this spec, run once for all its items."""
        if self._report is None:
            from editspec.errors import EditspecError
            from editspec.verify.session import verify_spec

            option = self.config.getoption
            try:
                self._report = verify_spec(
                    self.spec, artifact=option("editspec_artifact"), backend=option("editspec_backend"),
                    no_edit=not (option("editspec_artifact") or option("editspec_backend")),
                    model=_loaded(self._model_name()), protocol=option("editspec_protocol"),
                    chat=option("editspec_chat"), progress=None)
            except EditspecError as error:
                raise SpecError(error.render()) from None
        return self._report

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, SpecError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class CheckFailed(AssertionError):
    pass


class _SpecItem(pytest.Item):
    """An item of a spec: failures print as the spec line and the numbers, not as a traceback."""

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, (CheckFailed, SpecError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class CheckItem(_SpecItem):
    """One check of a spec; it fails at the spec line that declared it."""

    def __init__(self, *, check, **kwargs):
        super().__init__(**kwargs)
        self.check = check

    def runtest(self):
        report = self.parent.report()
        result = next(r for r in report.results if r.check.id == self.check.id)
        if result.passed:
            return
        from editspec.verify.report import expected_text

        message = (f"{self.check.location}: {self.check.metric} ({self.check.protocol}): "
                   f"{self.check.prompt!r}: expected {expected_text(result)}, got {result.got!r}")
        holding = [v for v in report.verdicts if v.reads(self.check) and v.holds]
        if holding:
            pytest.xfail(f"{message} (allowed: expect {holding[0].label} {holding[0].comparator} "
                         f"{holding[0].value:g} holds at {holding[0].location})")
        if self.check.alongside and not any(v.reads(self.check) for v in report.verdicts):
            pytest.xfail(f"{message} (reported beside the default protocol; no expect line reads "
                         f"{self.check.metric}[{self.check.protocol}])")
        raise CheckFailed(message + "\n  scores: " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.scores.items()))

    def reportinfo(self):
        return self.path, self.check.line - 1, f"{self.check.location}: {self.check.id}"


class ExpectationItem(_SpecItem):
    """One `expect` line: it fails when the metric's total under any protocol it reads misses it."""

    def __init__(self, *, index, **kwargs):
        super().__init__(**kwargs)
        self.index = index

    def runtest(self):
        report = self.parent.report()
        verdict = [v for v in report.verdicts if not v.metric.startswith("preserve ")][self.index]
        if not verdict.holds:
            seen = ", ".join(f"{t.protocol} {t.value:.3f} ({t.passed}/{t.count})" for t in verdict.totals)
            raise CheckFailed(f"{verdict.location}: expect {verdict.label} {verdict.comparator} {verdict.value:g}: "
                              f"got {seen or 'nothing measured it'}")

    def reportinfo(self):
        e = self.parent.spec.expect[self.index]
        return self.path, e.span.line - 1, f"{e.span.file}:{e.span.line}: {self.name}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)[:80]
