"""How long `editspec check` takes on generated specs of 1k and 10k edits (goal: 10k under 1 s).

Run:  python benchmarks/bench_check.py [--sizes 1000,10000] [--repeat 3]

Prints, per size, the best wall time of parse + lower + resolve + checks (the work `check`
does, in-process, after start-up) and the time per edit, so growth can be read as a ratio.
"""
from __future__ import annotations

import argparse
import time

from editspec.lang.resolve import analyse


def generated_spec(edits: int) -> str:
    """A realistic spec: a few relations, single edits with keep/scope blocks, and batches."""
    lines = [
        'model "smollm2-135m"',
        'relation ceo {\n  prompt "The CEO of {subject} is"\n  paraphrase "{subject} is led by"\n}',
        'relation capital {\n  prompt "The capital of {subject} is"\n  question "What is the capital of {subject}?"\n}',
    ]
    singles = edits // 10
    for i in range(singles):
        lines.append(f'edit ceo("Company {i}") -> "Person {i}" | "P{i}" {{\n  was "Founder {i}"\n'
                     f'  scope {{ "Company {i}\'s boss is" }}\n  keep {{ capital("Country {i}") -> "City {i}" }}\n}}')
    lines.append("edits capital {")
    lines.extend(f'  "Land {i}" -> "Town {i}"' for i in range(edits - singles))
    lines.append("}")
    lines.append("expect {\n  efficacy >= 0.95\n  locality >= 0.9\n}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    analyse("warmup.edit", text=generated_spec(10))  # build the parser once, as a long-lived process would
    print(f"{'edits':>8} {'bytes':>10} {'best s':>8} {'us/edit':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        text = generated_spec(size)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            analysis = analyse("generated.edit", text=text)
            best = min(best, time.perf_counter() - start)
        assert analysis.spec is not None and len(analysis.spec.edits) == size
        print(f"{size:>8} {len(text):>10} {best:>8.3f} {best / size * 1e6:>8.1f}")


if __name__ == "__main__":
    main()
