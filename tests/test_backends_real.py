"""Each weight-editing backend on the real default model (SmolLM2-135M): a two-fact spec.

After compiling, the new objects beat the old ones on the edit prompts and on paraphrases,
and unrelated prompts keep their greedy answers; reverting restores the model exactly.
Statistics come from 500 corpus documents (cached after the first backend) to keep CI short.
"""
import pytest
import torch

import editspec
from editspec.model.loading import load_model
from editspec.model.tokens import target_token_ids

SPEC = '''
relation capital {
  prompt     "The capital of {subject} is"
  paraphrase "The capital city of {subject} is"
}
edit capital("France") -> "Rome" { was "Paris" }
edit capital("Japan") -> "London" { was "Tokyo" }
'''
PROBES = [  # prompt, new object, old object
    ("The capital of France is", "Rome", "Paris"),
    ("The capital city of France is", "Rome", "Paris"),
    ("The capital of Japan is", "London", "Tokyo"),
    ("The capital city of Japan is", "London", "Tokyo"),
]
UNRELATED = ["Michael Jordan plays the sport of", "The Eiffel Tower is located in the city of",
             "Steve Jobs was the co-founder of"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded():
    return load_model()


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "two.edit"
    path.write_text(SPEC)
    return path


def _logprob(loaded, prompt, target):
    tok = loaded.tokenizer
    ids = tok(prompt)["input_ids"]
    tgt = target_token_ids(tok, prompt, target)
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids + tgt])).logits[0].float().log_softmax(-1)
    return float(sum(logits[len(ids) - 1 + j, t] for j, t in enumerate(tgt)))


def _greedy(loaded, prompt, tokens=3):
    ids = loaded.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return loaded.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.parametrize("backend", ["rome", "memit", "alphaedit"])
def test_two_facts_take_and_unrelated_prompts_stay(loaded, spec_file, tmp_path, backend):
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    unrelated = [_greedy(loaded, prompt) for prompt in UNRELATED]
    for prompt, new, old in PROBES:
        assert _logprob(loaded, prompt, old) > _logprob(loaded, prompt, new), prompt  # the model knows the old
    # Raw-prompt editing, as this test was written for: with chat rows (`chat auto`, the default
    # on instruct models) the unrelated greedy continuation of "Michael Jordan plays the sport
    # of" changes after these two edits (" the devil." -> " the last."). The unedited model has
    # " devil" only 0.10 nats above " last", and rome flips it under auto at the same KL as off;
    # but chat rows do move these prompts more for memit and alphaedit (KL 2-6x, measured in
    # docs/benchmarks.md, "Edits made for chat"), an open locality cost of chat-form editing
    # (issue 16); chat locality is checked by test_chat_edits_real.
    artifact = editspec.compile_spec(spec_file, backend, model=loaded, out=tmp_path / backend,
                                     overrides={"mom2_samples": "500", "chat": "off"})
    with editspec.load_edited(loaded, artifact):
        for prompt, new, old in PROBES:
            assert _logprob(loaded, prompt, new) > _logprob(loaded, prompt, old), (backend, prompt)
        assert [_greedy(loaded, prompt) for prompt in UNRELATED] == unrelated
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
