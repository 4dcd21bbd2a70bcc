"""The `grace` backend: GRACE's codebook at one MLP value projection (docs/methods/grace.md).

Keys are the projection's *input* at the positions that predict each answer token (the last
prompt token, then each answer token but the last); a position whose input lies within a
key's radius gets that key's value as the projection's output.  Values are trained with Adam
on the answers' NLL.  Every other position runs the unedited computation bit for bit.
The payload is `codebook.safetensors` (keys, radii, labels, values); `--on` extends it.
"""
from __future__ import annotations

import json

import torch

from editspec.build.artifact import Artifact
from editspec.build.backend import Backend, CompileJob, CompileResult
from editspec.families.memory.codebook import Codebook
from editspec.errors import EditspecError
from editspec.model.hooks import _hidden, _with_hidden, record_outputs
from editspec.model.layout import module_at
from editspec.families.memory.backend import (
    HookAttachment, edit_keys, fit, key_queries, per_edit_losses, radii, require_edits, value_projection_at,
)

from .config import CAPABILITIES, GraceConfig

CODEBOOK = "codebook.safetensors"


def grace_layer(model, layer) -> str:
    """The value projection GRACE wraps (`auto`: 80% of the depth)."""
    return value_projection_at(model, layer, 0.8)


def replace_hook(book: Codebook, values):
    """A forward hook: positions routed to an entry output its value; others are left as they are.

    `values` is a tensor [n, d_out] or a callable returning one (trainable during compile).
    """
    def hook(module, args, output):
        index = book.route(args[0])
        hit = index >= 0
        if not bool(hit.any()):
            return output  # the unedited output object itself
        hidden = _hidden(output)
        table = values() if callable(values) else values
        chosen = table.to(hidden.device)[index.clamp(min=0)].to(hidden.dtype)
        return _with_hidden(output, torch.where(hit[..., None], chosen, hidden))

    return hook


class GraceBackend(Backend):
    """One codebook entry per answer-predicting position of each edit prompt."""

    name = "grace"
    config_class = GraceConfig
    capabilities = CAPABILITIES
    attach_previous = False  # the previous memory is read from its files and rebuilt whole

    def compile(self, job: CompileJob) -> CompileResult:
        config: GraceConfig = job.config
        require_edits(job, self.name)
        model, tokenizer = job.model.model, job.model.tokenizer
        path = grace_layer(model, config.layer)
        book, values = (load_codebook(job.previous.file(CODEBOOK))[:2] if job.previous is not None
                        else (None, None))
        keyed = edit_keys(job)
        queries, origin = key_queries(job, path, keyed)
        eps = radii(job, path, queries)
        outputs = _outputs_at(model, tokenizer, path, keyed)
        book = book or Codebook.empty(queries.shape[1])
        values = values if values is not None else torch.zeros(0, outputs[0].shape[1])
        touched: list[int] = []
        generator = torch.Generator().manual_seed(job.seed)
        for row, (t, position) in enumerate(origin):
            label = keyed[t].labels[keyed[t].positions.index(position)]
            index = book.add(queries[row], label, float(eps[row]), config.mode)
            if index == values.shape[0]:
                start = outputs[t][position] if config.value_init == "warm" else torch.rand(
                    outputs[t].shape[1], generator=generator)
                values = torch.cat([values, start[None]])
            touched.append(index)
        log = train_values(job, path, book, values, sorted(set(touched)), keyed)
        save_codebook(job.workdir / CODEBOOK, book, log.pop("values"), path)
        per_edit = per_edit_losses(job, keyed, log.pop("per_text"))
        return CompileResult(files=[CODEBOOK], edits=per_edit,
                             details={"module": path, "entries": len(book), "new_keys": len(origin),
                                      "eps_mean": round(float(eps.mean()), 6), **log})

    def attach(self, model, artifact: Artifact) -> HookAttachment:
        book, values, path = load_codebook(artifact.file(CODEBOOK))
        handle = module_at(model, path).register_forward_hook(replace_hook(book, values))
        return HookAttachment(model, [handle])

    def merged(self, model, artifact: Artifact):
        raise EditspecError("a `grace` artifact is a memory consulted at run time; it cannot be merged into weights",
                            hint="use it with `editspec.load_edited(model, ARTIFACT)`, or compile with `ft` or `memit`")


@torch.no_grad()
def _outputs_at(model, tokenizer, path, keyed) -> list[torch.Tensor]:
    from editspec.model.tokens import pad_id, right_pad

    ids, mask = right_pad([k.ids for k in keyed], pad_id(tokenizer))
    device = model.get_input_embeddings().weight.device
    with record_outputs(model, [path]) as seen:
        model(input_ids=ids.to(device), attention_mask=mask.to(device))
    return [seen[path][r, : len(k.ids)].float().cpu() for r, k in enumerate(keyed)]


def train_values(job: CompileJob, path: str, book: Codebook, values: torch.Tensor, trained: list[int], keyed) -> dict:
    """Adam on the `trained` rows of `values` until every answer's mean NLL is below `stop_loss`."""
    config: GraceConfig = job.config
    rows = torch.tensor(trained, dtype=torch.long)
    param = torch.nn.Parameter(values[rows].clone())
    frozen = values.clone()

    def table():
        return frozen.index_put((rows,), param)

    handle = module_at(job.model.model, path).register_forward_hook(replace_hook(book, table))
    try:
        log = fit(job, keyed, [param], lr=config.edit_lr, n_iter=config.n_iter, stop_loss=config.stop_loss,
                  lowest=path)
    finally:
        handle.remove()
    final = table().detach()
    if not bool(torch.isfinite(final).all()):
        raise EditspecError("GRACE values became NaN or inf; refusing them", hint="try a smaller `edit_lr`")
    return {"values": final, **log}


def save_codebook(path, book: Codebook, values: torch.Tensor, module: str, extra: dict | None = None) -> None:
    """Keys, radii, labels and values in one safetensors file, with deterministic bytes."""
    from safetensors.torch import save

    tensors = {**book.tensors(), "values": values.float().contiguous()}
    meta = {"format": "editspec.codebook", "format_version": "1", "module": module, **(extra or {})}
    path.write_bytes(save(dict(sorted(tensors.items())), metadata={"editspec": json.dumps(meta, sort_keys=True)}))


def load_codebook(path) -> tuple[Codebook, torch.Tensor, str]:
    """`(codebook, values, module path)` from a file `save_codebook` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("editspec", "{}"))
        if meta.get("format") != "editspec.codebook":
            raise EditspecError(f"{path} is not an editspec codebook")
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return Codebook.from_tensors(tensors), tensors["values"].float(), meta["module"]
