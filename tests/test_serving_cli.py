"""`editspec serve` and `serve-model` refuse bad input with exit code 2 and a message, no traceback."""
from __future__ import annotations

import json

from click.testing import CliRunner

from editspec.cli import main


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_serve_needs_an_artifact_and_an_http_upstream(tmp_path):
    code, out = run("serve", str(tmp_path / "missing"), "--upstream", "http://127.0.0.1:1/v1")
    assert code == 2 and "no artifact" in out and "Traceback" not in out
    code, out = run("serve", str(tmp_path), "--upstream", "127.0.0.1:8000")
    assert code == 2 and "not an http(s) URL" in out


def test_serve_refuses_a_white_box_artifact(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "backend": {"name": "rome"}}))
    code, out = run("serve", str(tmp_path), "--upstream", "http://127.0.0.1:1/v1")
    assert code == 2 and "white-box" in out


def test_serve_model_names_an_unknown_model():
    code, out = run("serve-model", "--model", "smollm3-135m")
    assert code == 2 and "did you mean `smollm2-135m`" in out
