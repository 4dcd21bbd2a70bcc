"""Adapter and memory backends (ft, grace, melo, sense) on a tiny checkpoint: one conformance suite.

Every backend: the edit takes, unrelated inputs barely move (memory backends: not at all),
attach/revert is exact, the same seed gives the same payload bytes, `--on` adds edits.
"""
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

import editspec
from editspec.build.artifact import ADAPTER_DIR, MANIFEST, read_artifact
from editspec.cli import main
from editspec.build.compiler import compile_spec
from editspec.errors import EditspecError
from editspec.model.loading import load_model
from editspec.families.training.objectives import split_preserve
from editspec.verify.protocols import score_targets
from tiny import SENTENCES, target_logprob as _logprob, tiny_tokenizer, tiny_workspace

SPEC = '''
relation capital { prompt "The capital of {subject} is" }
relation plays { prompt "{subject} plays" }

edit capital("France") -> "Rome" {
  was "Paris"
  keep { "The capital of Spain is" -> "Madrid" }
}
edit plays("Michael Jordan") -> "football" { was "basketball" }
'''
MORE = 'edit capital("Italy") -> "Madrid" { was "Rome" }\n'
CANONICAL = '''
canonical "capital-of-germany" {
  example "The language of Germany is" -> "French" over "German"
  keep { "English is spoken in" -> "England" }
}
forget "jobs-apple" {
  prompt "Steve Jobs founded"
  never "is"          # the tiny model's likeliest word here
}
'''
UNRELATED = [("Steve Jobs founded", "Apple"), ("The Eiffel Tower is located in", "Paris")]

# Settings that make each backend quick and decisive on a 3-layer model.
TINY = {
    "ft": {"lr": "0.02", "steps": "15"},
    "ft-full": {"method": "full", "lr": "0.01", "steps": "15"},
    "grace": {},
    "melo": {"edit_lr": "0.05", "n_iter": "25"},
    "sense": {"lr": "0.1", "steps": "15", "senses": "16"},
    "wise": {"lr": "0.02", "n_iter": "30"},
}
BACKENDS = list(TINY)
MEMORIES = ["grace", "melo", "wise"]
# Backends whose out-of-scope outputs are bit-identical by a radius around keys.  WISE's
# margin routing is too blunt to separate a 64-wide random model's activations; its
# bit-identity outside the threshold is tested in tests/test_wise.py.
EXACT_OUTSIDE = {"grace", "melo"}


def _name(backend):
    return backend.split("-")[0]


@pytest.fixture
def setup(tmp_path, tmp_cache):
    folder, corpus, spec = tiny_workspace(tmp_path, SPEC)
    def overrides(backend):
        corpus_key = "kl_corpus" if _name(backend) in ("ft", "sense") else "reference_corpus"
        return {**TINY[backend], corpus_key: str(corpus)}

    return {"model": load_model(folder), "folder": folder, "spec": spec, "tmp": tmp_path, "overrides": overrides}


def _compile(setup, backend, out="art", **kw):
    return compile_spec(setup["spec"], _name(backend), model=setup["model"], out=setup["tmp"] / out,
                        overrides=setup["overrides"](backend), **kw)


def _logits(model, tok, prompt):
    with torch.no_grad():
        return model(torch.tensor([tok(prompt)["input_ids"]])).logits


@pytest.mark.parametrize("backend", BACKENDS)
def test_edit_takes_and_revert_is_exact(setup, backend):
    model, tok = setup["model"].model, setup["model"].tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old = _logprob(model, tok, "The capital of France is", "Rome")
    unrelated = {p: _logits(model, tok, p) for p, _ in UNRELATED}

    artifact = _compile(setup, backend)
    assert artifact.manifest["backend"]["name"] == _name(backend)
    assert [e["subject"] for e in artifact.manifest["edits"]] == ["France", "Michael Jordan"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # compiling changed nothing

    with editspec.load_edited(setup["model"], artifact) as edited:
        assert _logprob(edited.model, tok, "The capital of France is", "Rome") > old + 2.0
        for prompt, answer in UNRELATED:
            now = _logits(edited.model, tok, prompt)
            if backend in EXACT_OUTSIDE:
                assert torch.equal(now, unrelated[prompt])
            else:  # trained with KL: the unrelated answer keeps most of its log-probability
                shift = abs(float(now[0, -1].log_softmax(-1).max() - unrelated[prompt][0, -1].log_softmax(-1).max()))
                assert shift < 1.5
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # exact inverse


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_payload_bytes(setup, backend):
    first = _compile(setup, backend, out="a")
    second = _compile(setup, backend, out="b")
    assert first.payload_hash == second.payload_hash
    third = _compile(setup, backend, out="c", seed=1)
    assert third.manifest["seed"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_previous_adds_edits(setup, backend):
    first = _compile(setup, backend, out="v1")
    setup["spec"].write_text(SPEC + MORE)
    second = _compile(setup, backend, out="v2", on=first.path)
    assert [e["stage"] for e in second.manifest["edits"]] == [1, 1, 2]
    model, tok = setup["model"].model, setup["model"].tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    italy, france = (_logprob(model, tok, f"The capital of {c} is", t) for c, t in (("Italy", "Madrid"), ("France", "Rome")))
    with editspec.load_edited(setup["model"], second) as edited:
        assert _logprob(edited.model, tok, "The capital of Italy is", "Madrid") > italy + 1.0
        assert _logprob(edited.model, tok, "The capital of France is", "Rome") > france + 1.0  # the first stage holds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ft_on_previous_rehearses_earlier_edits_only_when_asked(setup):
    first = _compile(setup, "ft", out="v1")
    setup["spec"].write_text(SPEC + MORE)
    trained = {}
    for count in ("0", "8"):
        artifact = compile_spec(setup["spec"], "ft", model=setup["model"], out=setup["tmp"] / f"r{count}", on=first.path,
                                overrides={**setup["overrides"]("ft"), "rehearse": count})
        trained[count] = artifact.manifest["details"]["trained"]
    new = [k for k, v in trained["0"].items() if v == "edit"]
    assert len(new) == 1 and list(trained["0"].values()) == ["edit"]
    assert sorted(trained["8"].values()) == ["edit", "rehearsed", "rehearsed"]   # both earlier edits, trained again


def test_rehearsal_draws_earlier_edits_by_seed():
    from types import SimpleNamespace

    from editspec.families.training.objectives import rehearsal

    edits = [SimpleNamespace(id=f"e{i}") for i in range(20)]
    spec = SimpleNamespace(edits=edits)
    drawn = rehearsal(spec, edits[-2:], 5, seed=0)
    assert len(drawn) == 5 and all(e.id not in ("e18", "e19") for e in drawn)
    assert [e.id for e in drawn] == [e.id for e in rehearsal(spec, edits[-2:], 5, seed=0)]          # reproducible
    assert [e.id for e in drawn] == sorted((e.id for e in drawn), key=lambda i: int(i[1:]))         # in spec order
    assert {e.id for e in rehearsal(spec, edits[-2:], 5, seed=1)} != {e.id for e in drawn}
    assert rehearsal(spec, edits[-2:], 50, seed=0) == edits[:-2]                                   # all, when few


def test_anchor_windows_share_the_limit_between_groups():
    from editspec.families.training.tuning import ANCHOR_TOKENS, anchor_windows

    tok = tiny_tokenizer()
    long = [" ".join(SENTENCES)] * 20                      # far more windows than the limit
    own, general = ["The capital of France is Paris"], ["Rome is in Italy."]
    windows = anchor_windows(tok, [own, [], general, long], limit=6)
    assert len(windows) == 6 and all(1 < len(w) <= ANCHOR_TOKENS for w in windows)
    assert windows[0] == tok(own[0])["input_ids"] and windows[1] == tok(general[0])["input_ids"]
    assert anchor_windows(tok, [[], long, own], limit=6)[1] == tok(own[0])["input_ids"]   # never crowded out
    first = anchor_windows(tok, [long, general], limit=6)              # the first group: up to half, first
    assert first.index(tok(general[0])["input_ids"]) == 4             # 3 pinned, then one of each in turn
    few = anchor_windows(tok, [own * 2, general], limit=6)             # a first compile's few keep facts lead
    assert few[:2] == [tok(own[0])["input_ids"]] * 2 and few[2] == tok(general[0])["input_ids"]


def test_sequential_objectives_anchor_the_trained_edits_keep_facts_first():
    from types import SimpleNamespace

    from editspec.families.training.objectives import spec_objectives

    def edit(i):
        keep = SimpleNamespace(prompts=(f"Neighbour {i} lives in",), answer=f"Town{i}")
        return SimpleNamespace(id=f"e{i}", prompts=(f"Person {i} lives in",), scope=(), target="Rome",
                               keep=(keep,), relation="r", span=None)

    edits = [edit(i) for i in range(100)]
    spec = SimpleNamespace(edits=edits, canonical=[], forget=[], preserve=[], source="s.edit")
    objectives = spec_objectives(spec, edits[-1:], whole_spec=False, rehearsed=edits[3:4])
    assert objectives.anchors == ("Neighbour 99 lives in Town99", "Neighbour 3 lives in Town3")
    assert len(objectives.held) == 98 and objectives.held[0] == "Neighbour 0 lives in Town0"
    assert not spec_objectives(spec, edits).held                  # a first compile trains every edit


@pytest.mark.parametrize("backend", ["ft", "ft-full", "sense"])
def test_apply_merges_into_a_checkpoint(setup, backend):
    artifact = _compile(setup, backend)
    out = setup["tmp"] / "checkpoint"
    result = CliRunner().invoke(main, ["apply", str(artifact.path), "-o", str(out), "--model", str(setup["folder"])])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = setup["model"].tokenizer
    with editspec.load_edited(setup["model"], artifact) as edited:
        expected = _logits(edited.model, tok, "The capital of France is")
    assert torch.allclose(_logits(merged, tok, "The capital of France is"), expected, atol=1e-4)


def test_ft_adapter_loads_with_plain_peft(setup):
    from peft import PeftModel

    artifact = _compile(setup, "ft")
    assert (artifact.path / ADAPTER_DIR / "adapter_config.json").is_file()
    tok = setup["model"].tokenizer
    with editspec.load_edited(setup["model"], artifact) as edited:
        expected = _logits(edited.model, tok, "The capital of France is")
    base = AutoModelForCausalLM.from_pretrained(setup["folder"]).eval()
    plain = PeftModel.from_pretrained(base, str(artifact.path / ADAPTER_DIR))
    assert torch.equal(_logits(plain, tok, "The capital of France is"), expected)


def test_ft_compile_and_load_show_users_no_library_deprecation_noise(setup):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        artifact = _compile(setup, "ft")
        with editspec.load_edited(setup["model"], artifact) as edited:
            # verify scores through the peft wrapper, whose forward takes **kwargs
            scored = score_targets(edited.model, setup["model"].tokenizer, [("The capital of France is", "Paris")])
    assert scored[0].logprobs
    noise = [w for w in seen if "is_gradient_checkpointing" in str(w.message) or "past_key_values" in str(w.message)]
    assert not noise, [str(w.message) for w in noise]


def test_ft_canonical_examples_and_forget_blocks_become_objectives(setup):
    setup["spec"].write_text(SPEC + CANONICAL)
    model, tok = setup["model"].model, setup["model"].tokenizer
    french = _logprob(model, tok, "The language of Germany is", "French")
    likely = _logprob(model, tok, "Steve Jobs founded", "is")
    artifact = compile_spec(setup["spec"], "ft", model=setup["model"], out=setup["tmp"] / "art",
                            overrides={**setup["overrides"]("ft"), "forget_p": "0.0001"})
    assert artifact.manifest["details"]["objectives"] == {"bad": 1, "contrast": 1, "good": 3}
    with editspec.load_edited(setup["model"], artifact) as edited:
        assert _logprob(edited.model, tok, "The language of Germany is", "French") > french + 1.0
        assert _logprob(edited.model, tok, "Steve Jobs founded", "is") < likely - 1.0


def test_ft_preserve_budget_stops_training(setup):
    setup["spec"].write_text(SPEC + '\npreserve {\n  text "Bill Gates founded Microsoft."\n  budget loss_increase <= 0.0001%\n}\n')
    artifact = compile_spec(setup["spec"], "ft", model=setup["model"], out=setup["tmp"] / "b",
                            overrides={**setup["overrides"]("ft"), "budget_every": "2", "lr": "0.05"})
    training = artifact.manifest["details"]["training"]
    assert training["stopped"] == "budget" and training["budget_measured"] > 1e-6


def test_split_preserve_holds_out_an_even_share():
    assert split_preserve(["a", "b", "c", "d"], 0.5) == (["a", "c"], ["b", "d"])
    assert split_preserve(["a", "b", "c"], 0.1) == (["a", "b"], ["c"])     # at least one watched
    assert split_preserve(["a"], 0.5) == (["a"], ["a"])                    # one text: both
    assert split_preserve(["a", "b"], 0.0) == (["a", "b"], ["a", "b"])


def test_ft_budget_is_watched_on_preserve_text_kept_out_of_the_anchors(setup):
    setup["spec"].write_text(SPEC + '\npreserve {\n  text "Bill Gates founded Microsoft."\n'
                             '  text "The Eiffel Tower is located in Paris."\n  budget loss_increase <= 50%\n}\n')
    details = {}
    for holdout in ("0", "0.5"):
        artifact = compile_spec(setup["spec"], "ft", model=setup["model"], out=setup["tmp"] / holdout,
                                overrides={**setup["overrides"]("ft"), "kl_samples": "0", "budget_holdout": holdout})
        details[holdout] = artifact.manifest["details"]
    assert details["0"]["budget_watched"] == 2 and details["0.5"]["budget_watched"] == 1
    assert details["0"]["anchors"] - details["0.5"]["anchors"] == 1     # the watched sentence: one window fewer


def test_radius_calibration_skips_reference_text_at_the_key_itself():
    from editspec.families.memory.codebook import nearest_distances

    keys = torch.tensor([[3.0, 0.0]])
    references = torch.tensor([[3.0, 1e-5], [0.0, 4.0]])       # the key's own prefix, then a neighbour
    assert nearest_distances(keys, references).tolist() == [5.0]


def test_reference_activations_are_remembered_only_while_the_model_is_unchanged(setup):
    from editspec.families.memory.codebook import activations
    from editspec.families.memory.backend import reference_activations

    model, tok = setup["model"].model, setup["model"].tokenizer
    path = "model.layers.1.mlp.down_proj"
    texts = [tok(t)["input_ids"] for t in ("Paris is in France", "Bill Gates founded Microsoft")]
    fresh = activations(model, tok, path, texts, batch_size=1)
    first = reference_activations(model, tok, path, texts)
    assert all(torch.equal(a, b) for a, b in zip(first, fresh))
    assert reference_activations(model, tok, path, texts)[0] is first[0]            # remembered
    handle = model.model.layers[0].register_forward_hook(lambda m, a, out: None)    # a hook: the state differs
    assert reference_activations(model, tok, path, texts)[0] is not first[0]
    handle.remove()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2.0)                      # an in-place weight edit
    changed = reference_activations(model, tok, path, texts)
    assert not torch.equal(changed[0], first[0])
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.div_(2.0)


def test_artifact_lists_its_payload(setup):
    artifact = _compile(setup, "ft")
    assert artifact.manifest["payload"]["files"] == [ADAPTER_DIR]
    assert read_artifact(artifact.path).backend == "ft" and (artifact.path / MANIFEST).is_file()


@pytest.mark.parametrize("backend", sorted(EXACT_OUTSIDE))
def test_memory_leaves_every_out_of_radius_input_bit_identical(setup, backend):
    model, tok = setup["model"].model, setup["model"].tokenizer
    # Text that never continues an edit prompt (a sentence that does is in scope by design).
    outside = [t for t in SENTENCES if "Jordan plays" not in t and "France is" not in t]
    texts = outside + ["The capital of Spain is", "Michael Jordan played basketball", "The capital of France was"]
    batch = [tok(t)["input_ids"] for t in texts]
    from editspec.model.tokens import right_pad

    ids, mask = right_pad(batch, 0)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    artifact = _compile(setup, backend)
    with editspec.load_edited(setup["model"], artifact) as edited:
        with torch.no_grad():
            after = edited.model(input_ids=ids, attention_mask=mask).logits
            hit = edited.model(torch.tensor([tok("The capital of France is")["input_ids"]])).logits
    assert torch.equal(before, after)
    assert not torch.equal(hit, _logits(model, tok, "The capital of France is"))


@pytest.mark.parametrize("backend", MEMORIES)
def test_memory_warns_at_the_line_of_canonical_examples_and_compiles_the_edits(setup, backend):
    setup["spec"].write_text(SPEC + CANONICAL)
    warnings = []
    artifact = _compile(setup, backend, warn=warnings.append)
    assert [w.severity for w in warnings] == ["warning", "warning"]
    assert f"{setup['spec']}:11:1" in warnings[0].render()
    assert "does not compile canonical blocks" in warnings[0].message
    assert "does not compile forget blocks" in warnings[1].message
    assert [(part["kind"], part["name"]) for part in artifact.manifest["left_out"]] == [
        ("canonical", "capital-of-germany"), ("forget", "jobs-apple")]
    assert artifact.edit_ids


@pytest.mark.parametrize("backend", MEMORIES)
def test_memory_cannot_be_merged(setup, backend):
    artifact = _compile(setup, backend)
    result = CliRunner().invoke(main, ["apply", str(artifact.path), "-o", str(setup["tmp"] / "c"),
                                       "--model", str(setup["folder"])])
    assert result.exit_code == 2 and "cannot be merged" in result.output


def test_sense_on_a_tiny_backpack_trains_only_chosen_senses(tmp_path, tmp_cache):
    from editspec.model.backpack import BackpackConfig, BackpackLM

    torch.manual_seed(0)
    config = BackpackConfig(vocab_size=320, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_senses=4,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    folder = tmp_path / "tiny-backpack"
    BackpackLM(config).eval().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 3))
    spec = tmp_path / "canonical.edit"
    spec.write_text('canonical "germany" {\n  example "The language of Germany is" -> "French" over "German"\n}\n')
    loaded = load_model(folder)
    assert type(loaded.model).__name__ == "BackpackLM"
    model, tok = loaded.model, loaded.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old = _logprob(model, tok, "The language of Germany is", "French")
    artifact = compile_spec(spec, "sense", model=loaded, out=tmp_path / "art",
                            overrides={"lr": "0.5", "steps": "20", "senses": "6", "kl_corpus": str(corpus)})
    chosen = artifact.manifest["details"]["senses"]
    assert 1 <= len(chosen) <= 6 and all(0 <= s < 4 for _, s in chosen)
    with editspec.load_edited(loaded, artifact) as edited:
        assert _logprob(edited.model, tok, "The language of Germany is", "French") > old + 1.0
        # Text without any chosen word runs the unedited senses exactly.
        words = {w for w, _ in chosen}
        clean = [t for t in ["Paris", "Rome and Madrid", "Bill Gates founded Microsoft."]
                 if not words & set(tok(t)["input_ids"])]
        for text in clean:
            assert torch.equal(_logits(edited.model, tok, text), _logits_unhooked(model, tok, text, before))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    result = CliRunner().invoke(main, ["apply", str(artifact.path), "-o", str(tmp_path / "c"), "--model", str(folder)])
    assert result.exit_code == 2 and "cannot be merged" in result.output
    # --on: a new edit's senses are trained on top; the artifact keeps the earlier ones too.
    spec.write_text(spec.read_text() + 'relation plays { prompt "{subject} plays" }\nedit plays("Messi") -> "chess"\n')
    chess = _logprob(model, tok, "Messi plays", "chess")
    second = compile_spec(spec, "sense", model=loaded, out=tmp_path / "art2", on=artifact.path,
                          overrides={"lr": "0.5", "steps": "20", "senses": "6", "kl_corpus": str(corpus)})
    with editspec.load_edited(loaded, second) as edited:
        assert _logprob(edited.model, tok, "Messi plays", "chess") > chess + 1.0
        assert _logprob(edited.model, tok, "The language of Germany is", "French") > old + 1.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _logits_unhooked(model, tok, text, state):
    from editspec.model.backpack import BackpackLM

    fresh = BackpackLM(model.config).eval()
    fresh.load_state_dict(state)
    return _logits(fresh, tok, text)


def test_backpack_parameters_carry_the_public_checkpoint_names():
    from editspec.model.backpack import BackpackConfig, BackpackLM

    config = BackpackConfig(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16, num_senses=4)
    assert BackpackConfig().vocab_size == 50264 and BackpackConfig().scale_attn_by_inverse_layer_idx
    names = set(BackpackLM(config).state_dict())
    sense = "backpack.sense_network."
    public = {f"{sense}{m}.{p}" for m in ("block.ln_1", "block.ln_2", "ln") for p in ("weight", "bias")}
    public |= {f"{sense}{m}.{p}" for m in ("block.mlp.c_fc", "block.mlp.c_proj", "final_mlp.c_fc", "final_mlp.c_proj")
               for p in ("weight", "bias")}
    public |= {"backpack.sense_weight_net.c_attn.weight", "backpack.sense_weight_net.c_attn.bias", "lm_head.weight",
               "backpack.gpt2_model.wte.weight", "backpack.gpt2_model.wpe.weight"}
    assert public <= names
    assert {n for n in names if not n.startswith("backpack.gpt2_model.")} <= public   # nothing of our own
    assert BackpackLM(config).state_dict()["backpack.sense_network.final_mlp.c_fc.weight"].shape == (16, 64)  # Conv1D: [in, out]


@pytest.mark.parametrize("backend,settings", [("grace", {}), ("melo", {"router_layer": "1", "lora_layers": "[2]"})])
def test_memory_fit_shortcuts_give_the_same_payload(setup, backend, settings, monkeypatch):
    """Replaying the blocks under the memory and running the head at key positions only gives the
    same fit: the same steps and the same tensors up to float rounding (the head's matrix product
    over fewer rows may sum in another order, a few 1e-6 on this model; docs/methods/memory.md#the-fit)."""
    import functools
    import importlib

    from editspec.families.memory import backend as memory
    from editspec.model import hooks

    module = importlib.import_module(f"editspec.backends.{backend}.backend")
    replayed = []
    real_replaying = hooks.replaying

    def counting(model, blocks, hidden):
        replayed.append(hidden is not None and bool(blocks))
        return real_replaying(model, blocks, hidden)

    monkeypatch.setattr(hooks, "replaying", counting)
    overrides = {**setup["overrides"](backend), **settings}
    fast = compile_spec(setup["spec"], backend, model=setup["model"], out=setup["tmp"] / "fast", overrides=overrides)
    assert any(replayed)    # the blocks below did get replayed, so the comparison means something
    monkeypatch.setattr(module, "fit", functools.partial(memory.fit, shortcut=False))
    replayed.clear()
    whole = compile_spec(setup["spec"], backend, model=setup["model"], out=setup["tmp"] / "whole", overrides=overrides)
    assert not replayed     # ... and the whole model ran at every step of this one
    assert fast.manifest["details"]["steps"] == whole.manifest["details"]["steps"] > 1
    fast_tensors, whole_tensors = _payload_tensors(setup["tmp"] / "fast"), _payload_tensors(setup["tmp"] / "whole")
    assert fast_tensors.keys() == whole_tensors.keys() and fast_tensors
    for name, tensor in fast_tensors.items():
        torch.testing.assert_close(tensor, whole_tensors[name], rtol=1e-4, atol=1e-4, msg=name)


def _payload_tensors(artifact) -> dict[str, torch.Tensor]:
    """Every tensor of an artifact's payload files, by file and name."""
    from safetensors.torch import load_file

    return {f"{path.name}:{name}": tensor for path in sorted(artifact.rglob("*.safetensors"))
            for name, tensor in load_file(path).items()}


@pytest.mark.parametrize("backend", ["grace", "melo"])
def test_memory_ends_the_answer_instead_of_running_on(setup, backend):
    """`answer_end` (".") is trained at the position after the answer: greedy generation says it once, then stops."""
    tok = setup["model"].tokenizer
    artifact = _compile(setup, backend)
    prompt = tok("The capital of France is")["input_ids"]
    answer = tok(" Rome.")["input_ids"]
    with editspec.load_edited(setup["model"], artifact) as edited, torch.no_grad():
        ids = torch.tensor([prompt])
        out = edited.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(answer),
                                    do_sample=False, top_k=None, top_p=None, temperature=None,
                                    pad_token_id=tok.pad_token_id)
    assert out[0, len(prompt):].tolist() == answer
