"""The lifelong backends on the real default model (SmolLM2-135M): 50 CounterFact edits in five `--on` turns.

After the chain, against the unedited model on the same records: the edits take (efficacy),
reach their rephrasings (generalization) and leave their keep facts (locality) within a margin;
general-text perplexity stays bounded; reverting restores the model exactly.  Skips without the
shared CounterFact data.
"""
import json
from pathlib import Path

import pytest
import torch

import editspec
from editspec.build.compiler import compile_spec
from editspec.model.loading import load_model

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"
EDITS, TURN = 50, 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not DATA.is_file():
        pytest.skip(f"no CounterFact data at {DATA}")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_lifelong

    folder = tmp_path_factory.mktemp("lifelong")
    loaded = load_model()
    spec = bench_lifelong.import_spec(EDITS, folder)
    docs = bench_lifelong.general_docs(4)
    unedited = {**bench_lifelong.score(loaded.model, loaded.tokenizer, spec.edits),
                "ppl": bench_lifelong.perplexity(loaded.model, loaded.tokenizer, docs)}
    return {"loaded": loaded, "spec": spec, "folder": folder, "bench": bench_lifelong, "docs": docs,
            "unedited": unedited}


def _chain(setup, backend, overrides):
    previous = None
    for k in range(TURN, EDITS + 1, TURN):
        partial = setup["spec"].model_copy(update={"edits": setup["spec"].edits[:k]})
        previous = compile_spec(partial, backend, model=setup["loaded"], out=setup["folder"] / f"{backend}-{k}",
                                overrides=overrides, on=previous, incremental=False).path
    return previous


# (backend, settings, margins): efficacy must gain at least its margin over the unedited model,
# generalization and locality may fall at most theirs, perplexity may grow at most by its factor.
# Measured here (2026-12-04, loaded) at the defaults (statistics solve, context rows, two
# passes): efficacy 0.24 -> 0.96, rephrasings 0.30 -> 0.64, keep facts 0.74 -> 0.62, perplexity
# 30.3 -> 30.8 on 4 paragraphs.  The keep facts fall more than under the paper's ridge (0.72, at
# efficacy 0.42; one pass of the statistics solve: 0.66 at 0.56): the locality margin states
# that cost (docs/methods/ultraedit.md), it does not hide it.
# wise (2026-12-06, loaded, keyed at the subject): efficacy 0.24 -> 0.80, rephrasings 0.30 -> 0.74,
# keep facts 0.74 -> 0.76, perplexity 30.35 -> 30.51 (keyed at the answer, the earlier default:
# 0.96 / 0.42 / 0.64).  Its margin on rephrasings is negative: they must gain, which answer keys
# never did (docs/methods/wise.md).  The five turns share one memory, which forgets a little of
# its earlier turns (in one turn of 100: efficacy 0.95).
CASES = [
    ("ultraedit", {}, {"efficacy": 0.5, "generalization": 0.05, "locality": 0.15, "ppl": 1.05}),
    ("wise", {}, {"efficacy": 0.45, "generalization": -0.3, "locality": 0.05, "ppl": 1.02}),
]


@pytest.mark.parametrize("backend, settings, margins", CASES, ids=[c[0] for c in CASES])
def test_fifty_sequential_edits_hold_generalise_and_keep(setup, backend, settings, margins):
    loaded, bench, before = setup["loaded"], setup["bench"], setup["unedited"]
    weights = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    artifact = _chain(setup, backend, settings)
    with editspec.load_edited(loaded, artifact) as edited:
        after = {**bench.score(edited.model, loaded.tokenizer, setup["spec"].edits),
                 "ppl": bench.perplexity(edited.model, loaded.tokenizer, setup["docs"])}
    print(json.dumps({"backend": backend, "unedited": before, "edited": after}))
    assert after["efficacy"] >= before["efficacy"] + margins["efficacy"]
    assert after["generalization"] >= before["generalization"] - margins["generalization"]
    assert after["locality"] >= before["locality"] - margins["locality"]
    assert after["ppl"] <= before["ppl"] * margins["ppl"]
    assert all(torch.equal(weights[k], v) for k, v in loaded.model.state_dict().items())
