"""The `melo` backend: routed LoRA blocks, one per edit batch (MELO, docs/methods/melo.md).

A router at an earlier MLP value projection keys every token position by that module's
output; positions inside an edit cluster get the cluster's LoRA block added to the value
projections of `lora_layers`, all others run the unedited computation bit for bit.  The
routing decision is made per position inside the same forward pass (no global state), so
teacher forcing, padded batches and cached generation behave alike.

peft has no per-position block routing, so the blocks are editspec's own: the payload is
`melo.safetensors` (router clusters and points, ``A`` [blocks, r, d_in] and ``B``
[blocks, d_out, r] per module).  `--on` adds a block and its keys.
"""
from __future__ import annotations

import json
import math

import torch

from editspec.build.artifact import Artifact
from editspec.build.backend import Backend, CompileJob, CompileResult
from editspec.errors import EditspecError
from editspec.model.hooks import _hidden, _with_hidden
from editspec.model.layout import layout_for, module_at
from editspec.families.memory.backend import (
    HookAttachment, edit_keys, fit, key_queries, per_edit_losses, radii, require_edits,
)

from .config import CAPABILITIES, MeloConfig
from .router import Router

PAYLOAD = "melo.safetensors"


def melo_paths(model, config: MeloConfig) -> tuple[str, list[str]]:
    """The router's module path and the LoRA modules' paths (always after the router)."""
    layout = layout_for(model)
    count = layout.num_layers(model)
    router = max(int(0.75 * count) - 2, 0) if config.router_layer == "auto" else config.router_layer
    layers = [router + 1, router + 2] if config.lora_layers == "auto" else list(config.lora_layers)
    layers = [layer for layer in layers if layer < count] if config.lora_layers == "auto" else layers
    if router >= count or any(layer >= count for layer in layers):
        raise EditspecError(f"the model has {count} layers (0..{count - 1}); router {router}, LoRA layers {layers}")
    if not layers or min(layers) <= router:
        raise EditspecError(f"LoRA layers {layers} must come after the router layer {router}",
                            hint="the router decides before the blocks run, in the same forward pass")
    return layout.mlp_out_at(router), [layout.mlp_out_at(layer) for layer in layers]


def install(model, router: Router, router_path: str, lora: dict, scale: float) -> list:
    """Forward hooks: the router notes each position's block; LoRA modules add that block's update.

    `lora` maps a module path to ``(A, B)``: tensors [blocks, r, d_in] / [blocks, d_out, r], or
    callables returning them (trainable during compile).
    """
    cell: dict = {}

    def route(module, args, output):
        cell["blocks"] = router.route(_hidden(output))
        return None

    def make(path):
        def add_block(module, args, output):
            blocks = cell.get("blocks")
            hidden = _hidden(output)
            if blocks is None or blocks.shape != hidden.shape[:-1] or not bool((blocks >= 0).any()):
                return output  # nothing routed: the unedited output object itself
            a, b = (t() if callable(t) else t for t in lora[path])
            hit = blocks >= 0
            chosen = blocks.clamp(min=0)
            x = args[0].to(a.dtype)
            low = torch.einsum("bsi,bsri->bsr", x, a.to(x.device)[chosen])
            update = torch.einsum("bsr,bsor->bso", low, b.to(x.device)[chosen]) * scale
            return _with_hidden(output, torch.where(hit[..., None], hidden + update.to(hidden.dtype), hidden))

        return add_block

    handles = [module_at(model, router_path).register_forward_hook(route)]
    handles += [module_at(model, path).register_forward_hook(make(path)) for path in lora]
    return handles


class MeloBackend(Backend):
    """Each compile (an edit batch) trains one new LoRA block, reached only through the router."""

    name = "melo"
    config_class = MeloConfig
    capabilities = CAPABILITIES
    attach_previous = False  # the previous memory is read from its files and rebuilt whole

    def compile(self, job: CompileJob) -> CompileResult:
        config: MeloConfig = job.config
        require_edits(job, self.name)
        model = job.model.model
        router_path, lora_paths = melo_paths(model, config)
        if job.previous is not None:
            router, lora, meta = load_memory(job.previous.file(PAYLOAD))
            if meta["router"] != router_path or list(lora) != lora_paths:
                raise EditspecError(f"{job.previous.path} routes at other modules than these settings",
                                    hint="keep the router and LoRA layers of the previous artifact")
            first_label = meta["labels"]
        else:
            router, lora, first_label = None, {}, 0
        keyed = edit_keys(job)
        queries, origin = key_queries(job, router_path, keyed, where="output")
        radius = radii(job, router_path, queries, where="output")
        router = router or Router.empty(queries.shape[1])
        block = next(iter(lora.values()))[0].shape[0] if lora else 0
        labels = {edit.id: first_label + i for i, edit in enumerate(job.edits)}
        for row, (t, _) in enumerate(origin):
            router.add(queries[row], labels[keyed[t].source], block, float(radius[row]))
        log = self._train(job, router, router_path, lora_paths, lora, keyed, block)
        save_memory(job.workdir / PAYLOAD, router, log.pop("lora"), router_path,
                    {"labels": first_label + len(job.edits), "scale": config.lora_alpha / config.rank})
        edits = per_edit_losses(job, keyed, log.pop("per_text"), block=block)
        return CompileResult(files=[PAYLOAD], edits=edits,
                             details={"router": router_path, "lora": lora_paths, "blocks": block + 1,
                                      "clusters": len(router.centers), "points": len(router.points),
                                      "radius_mean": round(float(radius.mean()), 6), **log})

    def _train(self, job: CompileJob, router: Router, router_path: str, lora_paths: list[str], lora: dict,
               keyed, block: int) -> dict:
        config: MeloConfig = job.config
        model = job.model.model
        generator = torch.Generator().manual_seed(job.seed)
        params, tables = [], {}
        for path in lora_paths:
            module = module_at(model, path)
            d_out, d_in = _dims(module)
            bound = 1 / math.sqrt(d_in)
            a = torch.nn.Parameter((torch.rand(1, config.rank, d_in, generator=generator) * 2 - 1) * bound)
            b = torch.nn.Parameter(torch.zeros(1, d_out, config.rank))
            old_a, old_b = lora.get(path, (torch.zeros(0, config.rank, d_in), torch.zeros(0, d_out, config.rank)))
            tables[path] = (lambda a=a, old=old_a: torch.cat([old, a]), lambda b=b, old=old_b: torch.cat([old, b]))
            params += [a, b]
        handles = install(model, router, router_path, tables, config.lora_alpha / config.rank)
        try:
            log = fit(job, keyed, params, lr=config.edit_lr, n_iter=config.n_iter, stop_loss=config.stop_loss,
                      lr_step=config.lr_step, lowest=router_path)
        finally:
            for handle in handles:
                handle.remove()
        final = {path: tuple(t().detach() for t in tables[path]) for path in lora_paths}
        if not all(bool(torch.isfinite(t).all()) for pair in final.values() for t in pair):
            raise EditspecError("a MELO block became NaN or inf; refusing it", hint="try a smaller `edit_lr`")
        return {"lora": final, **log}

    def attach(self, model, artifact: Artifact) -> HookAttachment:
        router, lora, meta = load_memory(artifact.file(PAYLOAD))
        return HookAttachment(model, install(model, router, meta["router"], lora, meta["scale"]))

    def merged(self, model, artifact: Artifact):
        raise EditspecError("a `melo` artifact routes each input at run time; it cannot be merged into weights",
                            hint="use it with `editspec.load_edited(model, ARTIFACT)`, or compile with `ft`")


def _dims(module) -> tuple[int, int]:
    weight = module.weight
    return (weight.shape[1], weight.shape[0]) if type(module).__name__ == "Conv1D" else tuple(weight.shape)


def save_memory(path, router: Router, lora: dict, router_path: str, extra: dict) -> None:
    """Router and blocks in one safetensors file, with deterministic bytes."""
    from safetensors.torch import save

    tensors = {name: t.contiguous() for name, t in router.tensors().items()}
    for module, (a, b) in lora.items():
        tensors[f"lora.{module}.A"] = a.float().contiguous()
        tensors[f"lora.{module}.B"] = b.float().contiguous()
    meta = {"format": "editspec.melo", "format_version": "1", "router": router_path, "lora": list(lora), **extra}
    path.write_bytes(save(dict(sorted(tensors.items())), metadata={"editspec": json.dumps(meta, sort_keys=True)}))


def load_memory(path) -> tuple[Router, dict, dict]:
    """`(router, {module: (A, B)}, metadata)` from a file `save_memory` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("editspec", "{}"))
        if meta.get("format") != "editspec.melo":
            raise EditspecError(f"{path} is not an editspec MELO memory")
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    lora = {module: (tensors[f"lora.{module}.A"], tensors[f"lora.{module}.B"]) for module in meta["lora"]}
    return Router.from_tensors(tensors), lora, meta
