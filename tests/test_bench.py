"""`editspec bench` on a tiny checkpoint: rome, grace and ike (through the in-process model server),
plus a backend that cannot run; one table, every format, the exit codes."""
import json

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from blackbox_helpers import HashEmbedder
from editspec.bench.runner import BackendRun, BenchResult, run_bench, split_overrides, weights_fingerprint
from editspec.bench.render import markdown, text, to_json
from editspec.cli import main
from editspec.errors import EditspecError
from editspec.model.loading import load_model
from tiny import tiny_workspace

SPEC = '''
relation capital {
  prompt "The capital of {subject} is"
  paraphrase "{subject}'s capital city is"
}
edit capital("France") -> "Rome" {
  was "Paris"
  keep { "The capital of Spain is" -> "Madrid" }
}
expect { efficacy >= 0.0 }
'''
UNMET = SPEC + "expect { portability >= 0.5 }\n"  # no `implies`: nothing measures it, so it fails


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine made these compiles 100x slower
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDITSPEC_CACHE", str(tmp / "cache"))
        patch.setattr("editspec.model.embed.load_embedder", HashEmbedder)  # no MiniLM fetch in unit tests
        folder, corpus, spec = tiny_workspace(tmp, SPEC)
        settings = ["rome.layer=1", "rome.v_num_grad_steps=8", "rome.context_template_counts=[[2, 4]]",
                    "rome.mom2_samples=20", f"rome.mom2_corpus={corpus}", f"reference_corpus={corpus}"]
        yield {"tmp": tmp, "folder": folder, "spec": spec, "settings": settings}
    torch.set_num_threads(threads)


def _bench(workspace, backends, *args, spec=None):
    argv = ["bench", str(spec or workspace["spec"]), "--model", str(workspace["folder"]), "--backends", backends]
    for pair in workspace["settings"]:
        if "." not in pair.split("=")[0] or pair.split(".")[0] in backends.split(","):
            argv += ["--set", pair]
    return CliRunner().invoke(main, argv + list(args))


@pytest.fixture(scope="module")
def cli_run(workspace):
    out, png = workspace["tmp"] / "out", workspace["tmp"] / "bench.png"
    result = _bench(workspace, "rome,grace,ike,ft", "--set", "ft.lr=-1", "-o", str(out),
                    "--json", "--plot", str(png))
    return {"result": result, "data": json.loads(result.stdout), "out": out, "png": png}


def test_one_row_per_backend_with_real_values(cli_run):
    data = cli_run["data"]
    assert [run["backend"] for run in data["runs"]] == ["rome", "grace", "ike", "ft"]
    ran = [run for run in data["runs"] if run["status"] != "error"]
    assert [run["backend"] for run in ran] == ["rome", "grace", "ike"]
    for run in ran:
        assert run["compile_s"] > 0 and run["verify_s"] > 0 and run["peak_mb"] is not None
        assert {t["metric"] for t in run["totals"]} >= {"efficacy", "generalization", "locality"}
        for total in run["totals"]:
            assert 0 <= total["passed"] <= total["count"]
            if total["metric"] not in ("fluency", "preserve"):   # entropy and loss budgets: other scales
                assert 0.0 <= total["value"] <= 1.0
    # The black-box plugin is verified through the API with the generate protocol only.
    assert {t["protocol"] for t in ran[2]["totals"]} == {"generate"}
    assert "generate" not in {t["protocol"] for t in ran[0]["totals"]}
    assert {c["protocol"] for c in data["columns"]} >= {"generate", ran[0]["totals"][0]["protocol"]}


def test_a_backend_that_cannot_run_is_reported_and_the_others_still_run(cli_run):
    result, data = cli_run["result"], cli_run["data"]
    ft = data["runs"][3]
    assert ft["status"] == "error" and "lr" in ft["reason"] and ft["totals"] == []
    assert result.exit_code == 2 and data["exit_code"] == 2
    for backend in ("rome", "grace", "ike", "ft"):   # a progress line per backend on stderr
        assert f"] {backend}: " in result.stderr
    assert "Traceback" not in result.output


def test_artifacts_bench_json_and_plot_are_kept(cli_run):
    out = cli_run["out"]
    assert {p.name for p in out.iterdir()} >= {"rome", "grace", "ike", "bench.json"}
    assert json.loads((out / "bench.json").read_text())["runs"] == cli_run["data"]["runs"]
    assert cli_run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_and_markdown_tables(cli_run):
    data = cli_run["data"]
    result = BenchResult(**{k: data[k] for k in ("spec", "model", "seed", "protocol", "out", "upstream", "baseline_s")},
                         runs=[BackendRun(**run) for run in data["runs"]])
    table = text(result)
    assert "generate" in table and "peak MB" in table and "ft: could not run" in table
    rows = [line for line in markdown(result).splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 4 and len({row.count("|") for row in rows}) == 1
    assert json.loads(to_json(result))["runs"] == data["runs"]


def test_exit_codes(workspace):
    ok = _bench(workspace, "grace", "-o", str(workspace["tmp"] / "ok"), "--markdown")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("### bench") and "| grace | passed |" in ok.stdout
    unmet = workspace["tmp"] / "unmet.edit"
    unmet.write_text(UNMET)
    failed = _bench(workspace, "grace", "-o", str(workspace["tmp"] / "unmet"), spec=unmet)
    assert failed.exit_code == 1 and "expectation failed" in failed.stdout and "portability" in failed.stdout
    typo = _bench(workspace, "rome,gracee")
    assert typo.exit_code == 2 and "grace" in typo.output and "Traceback" not in typo.output


def test_python_api_shares_one_model_without_leaking_edits(workspace, monkeypatch):
    monkeypatch.setattr("editspec.model.embed.load_embedder", HashEmbedder)
    monkeypatch.setenv("EDITSPEC_CACHE", str(workspace["tmp"] / "cache"))
    loaded = load_model(workspace["folder"])
    before = weights_fingerprint(loaded.model)
    settings = dict(pair.split("=", 1) for pair in workspace["settings"])
    result = run_bench(workspace["spec"], ["rome", "grace"], model=loaded, out=workspace["tmp"] / "api",
                       overrides=settings)
    assert weights_fingerprint(loaded.model) == before
    assert [run.status for run in result.runs] == ["passed", "passed"] and result.exit_code == 0
    assert result.runs[0].value(result.columns()[0][0], "efficacy") is not None


def test_overrides_go_to_the_backends_that_have_them():
    assert split_overrides({"layer": "5", "v_num_grad_steps": "8", "grace.eps": "2"}, ["rome", "grace"]) == {
        "rome": {"layer": "5", "v_num_grad_steps": "8"}, "grace": {"layer": "5", "eps": "2"}}
    with pytest.raises(EditspecError, match="not one of --backends"):
        split_overrides({"memit.layers": "4..8"}, ["rome"])
    with pytest.raises(EditspecError, match="has no setting"):
        split_overrides({"rome.layr": "5"}, ["rome"])
    with pytest.raises(EditspecError, match="none of rome"):
        split_overrides({"nonsense": "1"}, ["rome"])


def test_exit_code_precedence_and_peak_memory():
    runs = [BackendRun("a", True, status="passed"), BackendRun("b", True, status="failed")]
    result = BenchResult(spec="s", model="m", seed=0, protocol=None, runs=runs, out="o")
    assert result.exit_code == 1
    result.runs.append(BackendRun("c", False, reason="no"))
    assert result.exit_code == 2
    # In a fresh process: inside the suite, memory other tests free while the block is held can
    # hide its growth (RSS is the whole process's).
    probe = ("from editspec.bench.runner import PeakMemory\n"
             "with PeakMemory() as memory:\n"
             "    block = bytearray(64 * 2**20)\n"
             "    block[::4096] = b'x' * len(block[::4096])\n"   # touch every page so it is resident
             "print(memory.peak_mb)")
    printed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert printed == "None" or float(printed) >= 50


def test_lifelong_score_sample_is_fixed_and_ordered():
    """`bench_lifelong.py --score-sample`: the same seeded edits for the same list and count, in
    their order, and every edit when the sample is not smaller than the list."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_lifelong

    edits = tuple(range(5000))
    chosen = bench_lifelong.sampled(edits, 1000)
    assert chosen == bench_lifelong.sampled(edits, 1000) and len(set(chosen)) == 1000
    assert list(chosen) == sorted(chosen) and chosen[-1] > 4000
    assert bench_lifelong.sampled(edits[:800], 1000) == edits[:800]
    assert bench_lifelong.sampled(edits, 0) == edits
