"""Training backends (ft, sense) in chat form keep their neighbours in chat form too (issue 16).

Trained to answer an edit as the reply to a user turn, the model must go on answering the keep
facts' questions as the unedited model did: the keep questions become KL anchors, each a user
turn through the chat template with the unedited model's own greedy reply, counted on the reply.
"""
import torch

from editspec.build.compiler import compile_spec
from editspec.families.training.objectives import spec_objectives
from editspec.families.training.tuning import ChatAnchor, anchor_kl, anchor_windows, chat_anchors, reference_anchors
from editspec.lang.resolve import load_spec
from editspec.model.chat import chat_prompt_ids
from editspec.model.loading import load_model
from tiny import tiny_chat_tokenizer, tiny_model, tiny_workspace

SPEC = '''
relation capital {
  prompt   "The capital of {subject} is"
  question "What is the capital of {subject}?"
}
edit capital("France") -> "Rome" {
  keep {
    capital("Spain") -> "Madrid"
    "The Eiffel Tower is located in" -> "Paris"
  }
}
edit capital("Italy") -> "Madrid" { keep { capital("Peru") -> "Lima" } }
'''


def test_keep_facts_are_asked_as_verify_asks_them_in_chat():
    spec = load_spec("x.edit", text=SPEC)
    chat = spec_objectives(spec, spec.edits, chat=True)
    # the relation's question where the keep fact has one, else its prompt (as verify's chat protocol)
    assert chat.chat_anchors == ("What is the capital of Spain?", "The Eiffel Tower is located in",
                                 "What is the capital of Peru?")
    assert chat.anchors == spec_objectives(spec, spec.edits).anchors          # the raw anchors stay as they were
    assert not spec_objectives(spec, spec.edits).chat_anchors                 # chat off: raw text only
    later = spec_objectives(spec, spec.edits[1:], whole_spec=False, chat=True)
    assert later.chat_anchors == ("What is the capital of Peru?",)
    assert later.held_chat == ("What is the capital of Spain?", "The Eiffel Tower is located in")


def _greedy(model, ids, n, eos):
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == eos:
                break
    return ids


def test_a_chat_anchor_holds_the_unedited_reply_and_counts_only_it():
    model, tok = tiny_model("llama"), tiny_chat_tokenizer()
    question = "What is the capital of Spain?"
    (anchor,) = chat_anchors(model, tok, [question], reply_tokens=6)
    prompt = chat_prompt_ids(tok, question)
    assert list(anchor.ids) == _greedy(model, prompt, 6, tok.eos_token_id)   # the model's own greedy reply
    assert anchor.start == len(prompt) - 1                                   # the position that predicts it
    raw = "The capital of Spain is Madrid"
    windows = anchor_windows(tok, [[raw, anchor]], limit=8)
    assert windows == [tok(raw)["input_ids"], anchor]                         # kept whole, in its group's order
    anchors = reference_anchors(model, tok, [[raw, anchor]])
    assert anchors.counted[0].tolist() == anchors.mask[0].tolist()            # raw text: every position
    assert anchors.counted[1, : anchor.start].sum() == 0 and bool(anchors.counted[1, anchor.start: len(anchor.ids)].all())
    with torch.no_grad():
        assert float(anchor_kl(model, anchors, torch.tensor([0, 1]))) < 1e-3  # the unedited model: no divergence

    # Moved, the KL of the chat row is the divergence on the reply positions alone.
    with torch.no_grad():
        torch.manual_seed(0)
        model.lm_head.weight.add_(0.3 * torch.randn_like(model.lm_head.weight))
        ids = torch.tensor([list(anchor.ids)])
        logp = model(ids).logits[0].float().log_softmax(-1)
        ref = anchors.reference[1, : len(anchor.ids)].float()
        per = (ref.exp() * (ref - logp)).sum(-1)
        assert abs(float(anchor_kl(model, anchors, torch.tensor([1]))) - float(per[anchor.start:].sum())) < 1e-2
        assert float(per[: anchor.start].sum()) > 0                            # the template moved too, uncounted


def test_ft_in_chat_form_anchors_the_keep_questions(tmp_path, tmp_cache):
    folder, corpus, spec = tiny_workspace(tmp_path, SPEC)
    tiny_chat_tokenizer().save_pretrained(folder)
    loaded = load_model(folder)
    settings = {"lr": "0.02", "steps": "3", "kl_corpus": str(corpus)}
    on = compile_spec(spec, "ft", model=loaded, out=tmp_path / "on", overrides={**settings, "chat": "auto"})
    off = compile_spec(spec, "ft", model=loaded, out=tmp_path / "off", overrides={**settings, "chat": "off"})
    # three keep questions, each one window beside the raw ones
    assert on.manifest.details["anchors"] == off.manifest.details["anchors"] + 3
