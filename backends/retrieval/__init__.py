"""Retrieval: an edit memory, MiniLM retrieval and LTE's inference prompt (docs/methods/retrieval.md).

    editspec compile specs/examples/leadership.edit --backend retrieval -o build/leadership.retrieval
    editspec serve build/leadership.retrieval --upstream http://127.0.0.1:8000/v1
"""
from editspec.families.plugin.backend import PluginBackend
from editspec.families.plugin.prompts import LTE_TEMPLATE

from .config import CAPABILITIES, RetrievalConfig


class RetrievalBackend(PluginBackend):
    """Routes in-scope requests to LTE's prompt carrying the top-k applicable facts."""

    name = "retrieval"
    config_class = RetrievalConfig
    capabilities = CAPABILITIES
    default_template = LTE_TEMPLATE


__all__ = ["RetrievalBackend", "RetrievalConfig"]
