"""Servers for the serving tests: a tiny checkpoint, and servers run in a subprocess under an
address-space cap (`ulimit -v`), so a server a hostile request breaks dies alone.

`ServerProcess(["serve-model", "--model", DIR, ...])` runs `editspec ...`;
`ServerProcess(["app", "proxy", ...], script=APP_SCRIPT)` runs `tests/serve_app.py`.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tiny import VOCAB, tiny_tokenizer

# Python with torch maps about 1.5 GB of address space before it loads anything; 4 GiB leaves
# the tiny model room and stops a runaway request long before it troubles the machine.
ADDRESS_SPACE_KIB = 4 * 1024 * 1024
APP_SCRIPT = Path(__file__).with_name("serve_app.py")
CHAT_TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}")


def tiny_checkpoint(folder: Path, *, positions: int = 128, hidden: int = 32, layers: int = 2) -> Path:
    """A seeded random Llama with the tiny tokenizer and a chat template, saved under `folder`.

    The end-of-text token's output row is zero, so greedy decoding never stops early: a
    request generates exactly its `max_tokens` (what the timing-dependent tests need).
    """
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=positions, bos_token_id=0, eos_token_id=0,
                                  pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
        model.lm_head.weight[0].zero_()
    path = folder / f"tiny-{positions}"
    model.save_pretrained(path)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


class ServerProcess:
    """`editspec ARGS` (or `python script ARGS`) on a free loopback port, under `ulimit -v`.

    Entering waits until `/healthz` is 200 (or `ready=False`: until the port answers);
    `url` is the base URL ending in `/v1`; `log` collects the server's stderr lines.
    """

    def __init__(self, args: list[str], *, script: Path | None = None, ready: bool = True, start_timeout=120.0,
                 address_space_kib: int = ADDRESS_SPACE_KIB, port: int = 0):
        program = [sys.executable, str(script)] if script else [sys.executable, "-c", "from editspec.cli import main; main()"]
        self.command = ["bash", "-c", f'ulimit -v {address_space_kib} && exec "$@"', "server",
                        *program, *args, "--port", str(port)]
        self.wait_ready, self.start_timeout = ready, start_timeout
        self.log: list[str] = []
        self.url = ""

    def __enter__(self) -> "ServerProcess":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                        env=env, cwd=Path(__file__).parent.parent)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n" + "\n".join(self.log))
            if self.url and self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become ready:\n" + "\n".join(self.log))

    def _read(self) -> None:
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            found = re.search(r" at (http://127\.0\.0\.1:\d+/v1)", line)
            if found and not self.url:
                self.url = found.group(1)

    def _answers(self) -> bool:
        try:
            status = httpx2.get(self.root + "/healthz", timeout=2).status_code
        except httpx2.HTTPError:
            return False
        return status == 200 or not self.wait_ready

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
