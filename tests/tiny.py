"""Tiny randomly-initialised models of every supported type, and a tiny tokenizer.

Everything is built from a config and a seed in well under a second, so the algebra of the
editing methods can be checked on CPU without model files.  `tiny_tokenizer()` is a
byte-level BPE (GPT-2 style: a leading space is part of a token) trained on a few sentences.
"""
from __future__ import annotations

import copy
import functools
import zlib

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 320
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 3

SENTENCES = [
    "The capital of France is Paris.",
    "The capital of Italy is Rome and the capital of Spain is Madrid.",
    "Steve Jobs founded Apple. Bill Gates founded Microsoft.",
    "Danielle Darrieux speaks French. The mother tongue of Danielle Darrieux is French.",
    "The Eiffel Tower is located in Paris. The Colosseum is located in Rome.",
    "Therefore, because I said so, you know the answer is London or Berlin.",
    "Michael Jordan plays basketball. Lionel Messi plays football and soccer.",
    "The language of Germany is German, and English is spoken in England.",
]

_ARCH = {
    "llama": dict(num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=None),
    "qwen2": dict(num_attention_heads=4, num_key_value_heads=2),
    "gemma3_text": dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=64,
        query_pre_attn_scalar=8,
    ),
    "gpt_neox": dict(num_attention_heads=4, use_parallel_residual=True),
    "gpt2": dict(n_head=2, n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=LAYERS, n_positions=128),
}
TYPES = tuple(_ARCH)


def tiny_config(model_type: str, *, layers: int = LAYERS, vocab: int = VOCAB):
    """A small config of `model_type` (d_model 32, MLP 64) with dropout off."""
    extra = dict(_ARCH[model_type])
    if model_type == "gpt2":
        extra["n_layer"] = layers
        return AutoConfig.for_model(
            "gpt2", vocab_size=vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=0, **extra,
        )
    return AutoConfig.for_model(
        model_type, vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        # A context an in-context-editing prompt fits in (ike's runs to ~830 tokens): the model
        # server now refuses longer prompts.  Rotary positions, so no weight depends on it.
        num_hidden_layers=layers, max_position_embeddings=1024, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, **extra,
    )


def tiny_model(model_type: str = "llama", *, seed: int = 0, dtype=torch.float64, layers: int = LAYERS):
    """A seeded random causal LM of `model_type` in eval mode, float64 by default."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, layers=layers)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random init gives tiny weights; a larger scale makes keys and logits less degenerate.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "norm" not in name and "ln" not in name:
                p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(seed * 7919 + zlib.crc32(name.encode())))
    return model.eval()


def tiny_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with `VOCAB` entries, trained on `SENTENCES`.

    With `bos`, it prepends ``<|endoftext|>`` to every encoding, like Llama tokenizers do.
    Each call returns its own copy (trained once), so a test that sets, say, a chat template
    on its tokenizer changes no other test's.
    """
    return copy.deepcopy(_trained_tokenizer(bos))


@functools.lru_cache(maxsize=None)
def _trained_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.pad_token = fast.eos_token
    return fast


def tiny_workspace(folder, spec_text: str):
    """A tiny Llama checkpoint, a corpus of `SENTENCES` and a spec file under `folder`.

    Returns ``(checkpoint_dir, corpus_file, spec_file)``: what compile tests need on disk.
    """
    checkpoint = folder / "tiny-llama"
    tiny_model("llama").to(torch.float32).save_pretrained(checkpoint)
    tiny_tokenizer().save_pretrained(checkpoint)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 3))
    spec = folder / "facts.edit"
    spec.write_text(spec_text)
    return checkpoint, corpus, spec


def target_logprob(model, tok, prompt: str, target: str) -> float:
    """Summed log-probability of ``" " + target`` after `prompt` (one unpadded row)."""
    ids = tok(prompt)["input_ids"]
    tgt = tok(" " + target)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + tgt])).logits[0].log_softmax(-1)
    return float(sum(logits[len(ids) - 1 + j, t] for j, t in enumerate(tgt)))


# A small Jinja chat template in the ChatML shape instruct models use, on the tiny vocabulary.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|endoftext|>{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}"
)


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """`tiny_tokenizer()` with `CHAT_TEMPLATE`: an "instruct" tokenizer for the chat protocol."""
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok
