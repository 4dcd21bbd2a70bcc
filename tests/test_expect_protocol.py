"""Expectations that name a protocol, `efficacy[chat] >= 0.9`: parse, IR, fmt, diff, check, verify, pytest."""
import json

import pytest
import torch

from editspec.errors import EditspecError
from editspec.lang.fmt import format_text
from editspec.lang.resolve import load_spec
from editspec.gitflow.diff import diff_specs, render_text
from editspec.verify import derive_checks, verify
from editspec.verify.report import terminal
from test_verify_chat import SPEC as CHAT_SPEC, UNEDITED, _scripted
from tiny import CHAT_TEMPLATE, tiny_chat_tokenizer, tiny_model, tiny_tokenizer

pytest_plugins = ["pytester"]

HEAD = 'relation capital {\n  prompt "The capital of {subject} is"\n}\n\nedit capital("France") -> "Rome" was "Paris"\n\n'


def _spec(expect: str):
    return load_spec("e.edit", text=HEAD + expect)


def test_a_named_protocol_reaches_the_ir_and_an_unnamed_one_serialises_as_before():
    spec = _spec("expect {\n  efficacy >= 0.9\n  efficacy[chat] >= 0.5\n}\n")
    plain, chat = spec.expect
    assert (plain.protocol, plain.label) == (None, "efficacy")
    assert (chat.protocol, chat.label, chat.value, chat.span.line) == ("chat", "efficacy[chat]", 0.5, 9)
    data = json.loads(spec.to_json())["expect"]
    assert "protocol" not in data[0] and data[1]["protocol"] == "chat"       # today's IR (and hash) for plain
    assert type(spec).from_json(spec.to_json()) == spec


def test_fmt_writes_the_protocol_tight_and_aligned():
    text = HEAD + "expect {\n  efficacy >= 0.9\n  locality[ chat ]   >= 80%\n}\n"
    assert format_text(text).endswith("expect {\n  efficacy       >= 0.9\n  locality[chat] >= 80%\n}\n")
    assert format_text(format_text(text)) == format_text(text)


def test_diff_keeps_a_metric_and_its_chat_expectation_apart():
    old = _spec("expect {\n  efficacy >= 0.9\n  efficacy[chat] >= 0.5\n}\n")
    new = _spec("expect {\n  efficacy >= 0.9\n  efficacy[chat] >= 0.7\n  locality[chat] >= 0.9\n}\n")
    diff = diff_specs(old, new)
    assert diff.expect.added == ["locality[chat] >= 0.9"] and [c.key for c in diff.expect.changed] == ["efficacy[chat]"]
    lines = render_text(diff)
    assert "  + expect locality[chat] >= 0.9" in lines and "      threshold: >= 0.5 -> >= 0.7" in lines


@pytest.mark.parametrize("expect, message, column", [
    ("efficacy[chta] >= 0.9", "unknown protocol `chta`", 12),
    ("fluency[chat] >= 2", "`fluency` is not measured under `chat`", 3),
    ("forget[chat] >= 1.0", "`forget` is not measured under `chat`", 3),
])
def test_a_wrong_protocol_is_a_diagnostic_at_its_place(expect, message, column):
    with pytest.raises(EditspecError) as caught:
        _spec("expect {\n  " + expect + "\n}\n")
    rendered = caught.value.render()
    assert f"e.edit:8:{column}: error: {message}" in rendered and "^" in rendered and "hint:" in rendered


def test_a_repeated_qualified_expectation_is_a_duplicate_but_plain_and_chat_are_not():
    _spec("expect {\n  efficacy >= 0.9\n  efficacy[chat] >= 0.5\n}\n")
    with pytest.raises(EditspecError, match=r"duplicate expectation for `efficacy\[chat\]`"):
        _spec("expect {\n  efficacy[chat] >= 0.9\n  efficacy[chat] >= 0.5\n}\n")


def test_chat_expectation_fails_at_its_line_and_the_plain_one_reads_compare(monkeypatch, tmp_path):
    path = tmp_path / "chat.edit"
    path.write_text(CHAT_SPEC.replace("expect { efficacy >= 0.0 }", "expect {\n  efficacy >= 0.0\n  efficacy[chat] >= 1.0\n}"))
    edited = {"What is the capital of France?": "Rome. No, Paris."}
    attachment = _scripted(monkeypatch, {False: UNEDITED, True: {**UNEDITED, **edited}})
    report = verify(load_spec(path), tiny_model("llama", dtype=torch.float32), tiny_chat_tokenizer(), attach=attachment)
    plain, chat = report.verdicts
    assert plain.holds and [t.protocol for t in plain.totals] == ["compare"]
    assert not chat.holds and [t.protocol for t in chat.totals] == ["chat"] and report.exit_code == 1
    assert f"FAIL {path}:17: efficacy[chat] >= 1 (chat 0.000)" in terminal(report)


def test_a_named_protocol_adds_its_checks_and_chat_needs_a_template(tmp_path):
    spec = _spec("expect {\n  efficacy[teacher_forced] >= 0.5\n}\n")
    checks = derive_checks(spec)
    assert [(c.id.split("/", 1)[1], c.protocol, c.alongside) for c in checks if c.metric == "efficacy"] == [
        ("efficacy/0", "compare", False), ("efficacy/teacher_forced/0", "teacher_forced", True)]
    chat = _spec("expect {\n  efficacy[chat] >= 0.5\n}\n")
    with pytest.raises(EditspecError, match=r"e.edit:8: `efficacy\[chat\]` needs an instruct model"):
        verify(chat, tiny_model("llama", dtype=torch.float32), tiny_tokenizer())


def test_pytest_fails_the_chat_expectation_at_its_line(tmp_path, tmp_cache, pytester):
    folder = tmp_path / "tiny-chat"
    tiny_model("llama").to(torch.float32).save_pretrained(folder)
    tokenizer = tiny_chat_tokenizer()
    tokenizer.save_pretrained(folder)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    target = pytester.path / "chat.edit"
    target.write_text(CHAT_SPEC.replace("expect { efficacy >= 0.0 }", "expect {\n  efficacy[chat] >= 1.0\n}"))
    result = pytester.runpytest_subprocess(str(target), "--editspec-model", str(folder), "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    n_checks = len(derive_checks(load_spec(target), chat=True))
    assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "xfailed")) == n_checks + 1
    assert f"{target}:16: expect efficacy[chat] >= 1: got chat 0.000 (0/1)" in result.stdout.str()
