"""A rome edit on the real default model (SmolLM2-135M-Instruct) holds where the model is used: in chat.

The edited question, asked as a user turn through the model's chat template, is answered with
the new object; a keep question's chat answer stays what the unedited model said.
"""
import pytest
import torch

import editspec
from editspec.model.chat import user_turn
from editspec.model.loading import load_model

SPEC = '''
relation city {
  prompt   "The {subject} is located in the city of"
  question "In which city is the {subject} located?"
}
edit city("Eiffel Tower") -> "Rome" {
  was "Paris"
  keep { city("Brandenburg Gate") -> "Berlin" }
}
'''

pytestmark = pytest.mark.slow


def _chat(loaded, question, tokens=16):
    tok = loaded.tokenizer
    ids = tok(user_turn(tok, question), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_rome_edit_answers_in_chat_and_keeps_the_neighbour(tmp_path):
    loaded = load_model()
    spec = tmp_path / "chat.edit"
    spec.write_text(SPEC)
    question, keep = "In which city is the Eiffel Tower located?", "In which city is the Brandenburg Gate located?"
    before, kept = _chat(loaded, question), _chat(loaded, keep)
    assert "Rome" not in before
    artifact = editspec.compile_spec(spec, "rome", model=loaded, out=tmp_path / "rome", overrides={"mom2_samples": "500"})
    with editspec.load_edited(loaded, artifact):
        assert "Rome" in _chat(loaded, question)
        assert _chat(loaded, keep) == kept
