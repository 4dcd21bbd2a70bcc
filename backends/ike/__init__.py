"""IKE: edits as in-context demonstrations in front of an API model's requests (docs/methods/ike.md).

    editspec compile specs/examples/leadership.edit --backend ike -o build/leadership.ike
    editspec serve build/leadership.ike --upstream http://127.0.0.1:8000/v1
"""
from editspec.families.plugin.backend import PluginBackend
from editspec.families.plugin.prompts import IKE_TEMPLATE

from .config import CAPABILITIES, IkeConfig


class IkeBackend(PluginBackend):
    """Routes in-scope requests to a prompt of IKE demonstrations ending in the edit's new fact."""

    name = "ike"
    config_class = IkeConfig
    capabilities = CAPABILITIES
    default_template = IKE_TEMPLATE

    def plugin_settings(self, config) -> dict:
        return {"demonstrations": config.demonstrations, "chat_turns": config.chat_turns}

    def compile(self, job):
        if job.config.template is not None and job.config.chat_turns:
            job.progress("note: the `template` shapes completion requests; chat requests get the demonstrations "
                         "as turns (`chat_turns false` uses the template in chat too)")
        return super().compile(job)


__all__ = ["IkeBackend", "IkeConfig"]
