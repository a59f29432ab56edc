"""Synthetic YAML for profile-guided bake benchmarks: nested maps, sequences and scalars.

    python3 recipes/yamlgen.py SEED block|flow DOCUMENTS > file.yaml

Two seeds and styles give a training input and a benchmark input that differ.
"""

from __future__ import annotations

import random
import sys

WORDS = ["alpha", "beta", "gamma", "delta", "kube", "node", "pod", "image", "cpu", "memory", "label", "value",
         "name", "spec"]


def scalar(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        return str(rng.randint(-10**6, 10**6))
    if r < 0.5:
        return f"{rng.random() * 1000:.4f}"
    if r < 0.6:
        return rng.choice(["true", "false", "null", "~"])
    if r < 0.8:
        return "-".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    return '"' + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + '"'


def emit(rng: random.Random, style: str, depth: int, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for _ in range(rng.randint(2, 6)):
        key = rng.choice(WORDS) + str(rng.randint(0, 99))
        r = rng.random()
        if depth < 4 and r < 0.35:
            out.append(f"{pad}{key}:")
            emit(rng, style, depth + 1, indent + 2, out)
        elif depth < 4 and r < 0.55:
            out.append(f"{pad}{key}:")
            for _ in range(rng.randint(1, 5)):
                item = "[" + ", ".join(scalar(rng) for _ in range(3)) + "]" if style == "flow" else scalar(rng)
                out.append(f"{pad}  - {item}")
        else:
            out.append(f"{pad}{key}: {scalar(rng)}")


def main() -> None:
    rng, style, n = random.Random(int(sys.argv[1])), sys.argv[2], int(sys.argv[3])
    out: list[str] = []
    for _ in range(n):
        out.append("---")
        emit(rng, style, 0, 0, out)
    print("\n".join(out))


if __name__ == "__main__":
    main()
