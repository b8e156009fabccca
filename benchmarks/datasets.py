"""Real small datasets that ship inside PyPI packages, written out as folders parvis reads.

    python benchmarks/datasets.py digits data/digits          # scikit-learn's 8x8 digits, 32 px ImageFolder

`write_digits`: the 1,797 handwritten digits of scikit-learn (UCI optdigits, 8x8, 17 grey levels),
upscaled to `size` px single-channel PNGs, split 80/20 per class with a seeded shuffle:
OUT/train/<digit>/NNNN.png and OUT/val/<digit>/NNNN.png. Tests and the learning benchmarks use it
as data parvis did not generate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits  # test-only extra (scikit-learn), not a parvis dependency

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        return out
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "digits":
        sys.exit("usage: python benchmarks/datasets.py digits OUT")
    print(write_digits(sys.argv[2]))
