"""Adapter and memory backends on the real default model (SmolLM2-135M): `verify` on a two-fact spec.

Each backend compiles the spec with its default settings and the verifier's expectations must
hold; the model is reverted exactly afterwards.  Slow: minutes per backend on 2 CPU cores.
"""
import pytest
import torch

from editspec.model.loading import load_model
from editspec.verify.session import verify_spec

SPEC = '''
relation capital {
  prompt     "The capital of {subject} is"
  paraphrase "{subject}'s capital city is"
}
edit capital("Australia") -> "Sydney" {
  was "Canberra"
  keep {
    capital("Canada") -> "Ottawa"
    "The largest city in New Zealand is" -> "Auckland"
  }
}
edit capital("Nigeria") -> "Lagos" {
  was "Abuja"
  keep { capital("Kenya") -> "Nairobi" }
}
expect {
  efficacy >= 0.95
  locality >= 0.9
}
'''
SETTINGS = {"ft": {}, "sense": {}, "grace": {}, "melo": {}}  # defaults: what `editspec verify --backend B` runs
# (`sense` on an ordinary transformer trains the k most relevant MLP value vectors of each example)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded():
    return load_model()


@pytest.mark.parametrize("backend", list(SETTINGS))
def test_two_facts_pass_verify(loaded, backend, tmp_path):
    spec = tmp_path / "two.edit"
    spec.write_text(SPEC)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    report = verify_spec(spec, backend=backend, model=loaded, overrides=SETTINGS[backend])
    totals = {t.metric: t.value for t in report.totals.values()}
    assert report.exit_code == 0, totals
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
