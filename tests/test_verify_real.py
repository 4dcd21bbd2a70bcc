"""verify on the real default model: the unedited model does not pass an edit spec."""
import pytest

from editspec.model.loading import load_model
from editspec.verify.report import terminal
from editspec.verify.session import verify_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model()


def test_unedited_model_fails_efficacy_on_capitals(smollm, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITSPEC_CACHE", str(tmp_path))     # baselines only; the model is loaded
    report = verify_spec("specs/examples/capitals.edit", no_edit=True, model=smollm, progress=None)
    assert report.exit_code == 1
    efficacy = next(v for v in report.verdicts if v.metric == "efficacy")
    assert not efficacy.holds and efficacy.location == "specs/examples/capitals.edit:40"
    # SmolLM2 knows Brasília is Brazil's capital: that edit's efficacy check fails at its line
    brazil = next(r for r in report.results if r.check.id.startswith("capital-brazil") and r.check.metric == "efficacy")
    assert not brazil.passed and brazil.check.location == "specs/examples/capitals.edit:34"
    assert "FAIL specs/examples/capitals.edit:40: efficacy >= 0.9 (compare" in terminal(report)
    # the unedited model agrees with itself: every locality failure is a lost comparison, not drift
    assert all(r.scores["agrees_with_unedited"] for r in report.results if r.check.metric == "locality")


def test_chat_asks_through_the_instruct_template_and_catches_the_old_object(smollm, tmp_path, monkeypatch):
    """Unedited SmolLM2-Instruct, asked in chat: the old capital is said (efficacy fails on it), a kept one stays."""
    from editspec.lang.resolve import load_spec
    from editspec.verify.protocols import chat_prompt_ids

    monkeypatch.setenv("EDITSPEC_CACHE", str(tmp_path))
    spec = tmp_path / "chat.edit"
    spec.write_text('relation capital {\n  prompt "The capital of {subject} is"\n'
                    '  question "What is the capital of {subject}?"\n}\n\n'
                    'edit capital("France") -> "Rome" {\n  was "Paris"\n  keep { capital("Germany") -> "Berlin" }\n}\n\n'
                    'expect {\n  efficacy[chat] >= 1.0\n}\n')
    asked = smollm.tokenizer.decode(chat_prompt_ids(smollm.tokenizer, "What is the capital of France?"))
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" in asked
    report = verify_spec(load_spec(spec), no_edit=True, model=smollm, progress=None)
    chat = {r.check.metric: r for r in report.results if r.check.protocol == "chat"}
    assert set(chat) == {"efficacy", "locality"} and chat["efficacy"].check.prompt == "What is the capital of France?"
    assert not chat["efficacy"].passed and chat["efficacy"].scores["old_object"] == "Paris"
    assert chat["locality"].passed and chat["locality"].scores["kept"] == "keep answer"
    assert report.exit_code == 1 and f"FAIL {spec}:12: efficacy[chat] >= 1 (chat 0.000)" in terminal(report)
