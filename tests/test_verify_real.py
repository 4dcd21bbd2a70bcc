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
    assert not efficacy.holds and efficacy.location == "specs/examples/capitals.edit:42"
    # SmolLM2 knows Brasília is Brazil's capital: that edit's efficacy check fails at its line
    brazil = next(r for r in report.results if r.check.id.startswith("capital-brazil") and r.check.metric == "efficacy")
    assert not brazil.passed and brazil.check.location == "specs/examples/capitals.edit:36"
    assert "FAIL specs/examples/capitals.edit:42: efficacy >= 0.9 (compare" in terminal(report)
    # the unedited model agrees with itself: every locality failure is a lost comparison, not drift
    assert all(r.scores["agrees_with_unedited"] for r in report.results if r.check.metric == "locality")
