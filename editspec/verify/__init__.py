"""Verification: the checks a spec implies, run on an edited model against the unedited one.

>>> from editspec.verify import verify
>>> report = verify(spec, loaded.model, loaded.tokenizer, weights_hash=loaded.weights_hash)  # doctest: +SKIP
>>> report.exit_code  # doctest: +SKIP
1
"""
from editspec.verify.checks import Check, derive_checks
from editspec.verify.engine import Report, chat_results, verify
from editspec.verify.judge import CheckResult, Verdict
from editspec.verify.protocols import PROTOCOLS

__all__ = ["PROTOCOLS", "Check", "CheckResult", "Report", "Verdict", "chat_results", "derive_checks", "verify"]
