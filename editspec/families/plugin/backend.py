"""The shared body of the black-box backends: compile a spec into `plugin/`.

`ike` and `retrieval` differ only in their default template and in how a request's prompt
is assembled (`editspec.families.plugin.plugin`); both store the same memory and router.  Adding
edits with `--on` keeps the earlier artifact's records and appends the new ones.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from editspec.build.backend import Backend, Capabilities, CompileJob, CompileResult
from editspec.families.plugin.memory import MEMORY_FILE, edit_record


class PluginBackend(Backend):
    """A backend that writes a black-box plugin; subclasses set `name`, `config_class`, `default_template`."""

    capabilities = Capabilities(white_box=False, batch=True, sequential=True, reversible=True)
    needs_model = False
    default_template: ClassVar[str]

    def plugin_settings(self, config) -> dict:
        """Kind-specific settings stored in router.json (IKE adds its demonstration count and chat form)."""
        return {"demonstrations": 0}

    def template_path(self, job: CompileJob) -> str | None:
        """The `template` setting, relative to the spec file that set it (else as given)."""
        setting = job.config.template
        if setting is None or Path(setting).is_absolute():
            return setting
        block = job.spec.backend(self.name)
        spans = [item.span for item in (block.settings if block else ()) if item.key == "template"]
        if spans and (Path(spans[0].file).parent / setting).is_file():
            return str(Path(spans[0].file).parent / setting)
        return setting

    def compile(self, job: CompileJob) -> CompileResult:
        from editspec.build.artifact import PLUGIN_DIR
        from editspec.families.plugin.plugin import write_plugin
        from editspec.families.plugin.prompts import read_template
        from editspec.model.embed import load_embedder

        config = job.config
        records = []
        if job.previous is not None:
            old = job.previous.file(PLUGIN_DIR) / MEMORY_FILE
            records = [json.loads(line) for line in old.read_text(encoding="utf-8").splitlines() if line.strip()]
        records += [edit_record(edit) for edit in job.edits]
        job.progress(f"embedding {len(records)} edit(s) for the {self.name} plugin")
        folder = job.workdir / PLUGIN_DIR
        settings = write_plugin(
            folder, kind=self.name, records=records,
            template=read_template(self.template_path(job), self.default_template),
            embedder=load_embedder(), threshold=config.threshold, default_threshold=config.default_threshold,
            mention_bonus=config.mention_bonus, top_k=config.top_k, seed=job.seed, **self.plugin_settings(config))
        job.progress(f"router threshold {settings['threshold']:.3f} ({settings['threshold_source']})")
        return CompileResult(files=[PLUGIN_DIR], details={"router": settings})
