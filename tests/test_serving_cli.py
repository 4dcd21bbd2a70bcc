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
    from editspec.backends.rome.config import CAPABILITIES

    manifest = {"schema_version": 1, "editspec_version": "test", "seed": 0, "edits": [], "model": None,
                "spec": {"source": "x.edit", "files": [], "ir_hash": "0"},
                "backend": {"name": "rome", "config": {}, "capabilities": CAPABILITIES.model_dump()},
                "payload": {"files": [], "hash": "0"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code, out = run("serve", str(tmp_path), "--upstream", "http://127.0.0.1:1/v1")
    assert code == 2 and "white-box" in out


def test_serve_model_names_an_unknown_model():
    code, out = run("serve-model", "--model", "smollm3-135m")
    assert code == 2 and "did you mean `smollm2-135m`" in out


def test_limit_flags_take_sizes_and_refuse_bad_values():
    from editspec.commands.serving import ByteSize

    size = ByteSize()
    assert [size.convert(v, None, None) for v in ("1048576", "512KiB", "8MiB", "1GB", "1.5 KiB")] == \
        [1 << 20, 512 << 10, 8 << 20, 10 ** 9, 1536]
    code, out = run("serve-model", "--max-body-bytes", "lots")
    assert code == 2 and "is not a size" in out
    code, out = run("serve-model", "--max-waiting", "-1")
    assert code == 2 and "--max-waiting" in out and "Traceback" not in out
    code, out = run("serve", "--help")
    assert "--max-body-bytes" in out and "8 MiB" in out and "--max-completion-tokens" in out
