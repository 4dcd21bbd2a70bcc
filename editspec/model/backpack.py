"""Backpack language models (Hewitt et al. 2023), enough to load one and fine-tune its senses.

Each vocabulary item has `num_senses` sense vectors, computed from its embedding by a small
network; a GPT-2 transformer produces, per sense, causal weights α over the sequence; the
output at position i is ``Σ_ℓ Σ_j α[ℓ, i, j] · sense_ℓ(x_j)``, scored against the (tied)
word embeddings.  Parameter names follow the public Backpack-GPT2 checkpoints
(`backpack.gpt2_model.*`, `backpack.sense_network.*`, `backpack.sense_weight_net.c_attn`), so
a local directory with their `config.json` (`model_type` "backpack-gpt2") and weights loads
with ``AutoModelForCausalLM.from_pretrained`` once this module is imported.

    >>> import editspec.model.backpack                                  # registers the model type
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/backpack")   # doctest: +SKIP
    >>> model(input_ids).contextualization.shape                 # [batch, senses, seq, seq]  # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2Model, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import ModelOutput
from transformers.pytorch_utils import Conv1D

MODEL_TYPE = "backpack-gpt2"


class BackpackConfig(GPT2Config):
    """A GPT-2 config plus `num_senses` and the sense network's width (`sense_intermediate_scale` × d).

    The defaults are those of the public Backpack-GPT2 config (50,264 words, 512 positions,
    attention scaled by the inverse layer index), so a `config.json` that leaves them out
    still describes that model.
    """

    model_type = MODEL_TYPE

    def __init__(self, num_senses: int = 16, sense_intermediate_scale: int = 4, vocab_size: int = 50264,
                 n_positions: int = 512, scale_attn_by_inverse_layer_idx: bool = True, **kwargs):
        self.num_senses = num_senses
        self.sense_intermediate_scale = sense_intermediate_scale
        super().__init__(vocab_size=vocab_size, n_positions=n_positions,
                         scale_attn_by_inverse_layer_idx=scale_attn_by_inverse_layer_idx, **kwargs)


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, config: BackpackConfig):
        super().__init__()
        self.c_fc = Conv1D(hidden, d_in)
        self.c_proj = Conv1D(d_out, hidden)
        self.act = ACT2FN[config.activation_function]

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class _SenseBlock(nn.Module):
    """A residual MLP block without token mixing."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = _MLP(config.n_embd, 4 * config.n_embd, config.n_embd, config)

    def forward(self, hidden, residual):
        residual = residual + hidden
        residual = residual + self.mlp(self.ln_1(residual))
        return self.ln_2(residual)


class SenseNetwork(nn.Module):
    """Word embeddings [b, s, d] -> sense vectors [b, senses, s, d]."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.num_senses, self.n_embd = config.num_senses, config.n_embd
        self.block = _SenseBlock(config)
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.final_mlp = _MLP(config.n_embd, config.sense_intermediate_scale * config.n_embd,
                              config.n_embd * config.num_senses, config)

    def forward(self, embeds):
        senses = self.final_mlp(self.block(self.ln(embeds), embeds))
        b, s, _ = senses.shape
        return senses.reshape(b, s, self.num_senses, self.n_embd).transpose(1, 2)


class SenseWeights(nn.Module):
    """Contextual states [b, s, d] -> causal weights α [b, senses, s, s], one attention head per sense."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.num_senses = config.num_senses
        self.head = config.n_embd // config.num_senses
        self.c_attn = nn.Linear(config.n_embd, 2 * config.num_senses * self.head)

    def forward(self, states):
        b, s, _ = states.shape
        q, k = self.c_attn(states).reshape(b, s, 2, self.num_senses, self.head).unbind(dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(self.head)
        future = torch.triu(torch.ones(s, s, dtype=torch.bool, device=states.device), 1)
        return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


class _Backpack(nn.Module):
    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.gpt2_model = GPT2Model(config)
        self.sense_network = SenseNetwork(config)
        self.sense_weight_net = SenseWeights(config)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.gpt2_model.wte


@dataclass
class BackpackOutput(ModelOutput):
    """Logits [b, s, vocab] and the contextualization α [b, senses, s, s]."""

    logits: torch.Tensor | None = None
    contextualization: torch.Tensor | None = None


class BackpackLM(PreTrainedModel):
    """A Backpack language model with a head tied to the word embeddings."""

    config_class = BackpackConfig
    base_model_prefix = "backpack"
    _tied_weights_keys = {"lm_head.weight": "backpack.gpt2_model.wte.weight"}

    def __init__(self, config: BackpackConfig):
        super().__init__(config)
        self.backpack = _Backpack(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.backpack.word_embeddings.weight
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backpack.word_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, **unused) -> BackpackOutput:
        senses = self.backpack.sense_network(self.backpack.word_embeddings(input_ids))  # [b, nv, s, d]
        states = self.backpack.gpt2_model(input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids).last_hidden_state
        alpha = self.backpack.sense_weight_net(states)  # [b, nv, s, s]
        hidden = (alpha @ senses).sum(dim=1)  # [b, s, d]
        return BackpackOutput(logits=self.lm_head(hidden), contextualization=alpha)


def is_backpack(model) -> bool:
    """Whether `model` is a Backpack (sense fine-tuning then works on its senses)."""
    return getattr(getattr(model, "config", None), "model_type", None) == MODEL_TYPE


AutoConfig.register(MODEL_TYPE, BackpackConfig, exist_ok=True)
AutoModelForCausalLM.register(BackpackConfig, BackpackLM, exist_ok=True)
