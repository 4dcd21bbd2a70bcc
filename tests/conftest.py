"""Shared pytest fixtures."""
import pytest


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty editspec cache directory (EDITSPEC_CACHE) for one test."""
    root = tmp_path / "editspec-cache"
    monkeypatch.setenv("EDITSPEC_CACHE", str(root))
    monkeypatch.delenv("EDITSPEC_WHEELHOUSE", raising=False)
    return root
