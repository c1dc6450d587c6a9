#!/usr/bin/env python3
"""Writes assets/imagenet_classes.txt: the 1000 ILSVRC-2012 class names in class-id order, the
label space of the official VAR checkpoints (class_emb rows 0..999).

The names are the short English labels torchvision publishes with its ImageNet weights (its
`_IMAGENET_CATEGORIES`, BSD-3-Clause): one WordNet lemma per synset, made unique where two synsets
share a lemma ("crane" the machine, 517, vs "crane bird", 134). They are read from a torchvision
wheel's source with `ast`, so torchvision need not import (or be installed):

    pip download --no-deps torchvision -d /tmp/tv
    python scripts/imagenet_classes.py /tmp/tv/torchvision-*.whl
"""

import argparse
import ast
import zipfile
from pathlib import Path

META = "torchvision/models/_meta.py"
OUT = Path(__file__).resolve().parent.parent / "assets" / "imagenet_classes.txt"


def read_categories(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        tree = ast.parse(z.read(META).decode())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_IMAGENET_CATEGORIES":
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"{wheel}: no _IMAGENET_CATEGORIES in {META}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="a torchvision wheel (.whl)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    names = read_categories(args.wheel)
    # The Rust side relies on these: 1000 unique names, one per line, no commas (the CLI's --class
    # splits on commas). Two differ only in case: "Cardigan" (264, the corgi) and "cardigan" (474).
    assert len(names) == 1000, len(names)
    assert len(set(names)) == 1000, "names must be unique"
    assert all(n == n.strip() and n and "," not in n and "\n" not in n for n in names)
    header = [
        "# The 1000 ImageNet (ILSVRC-2012) class names in class-id order: line k (not counting",
        "# these comment lines) is class k. Source: torchvision's _IMAGENET_CATEGORIES (BSD-3-Clause),",
        "# written by scripts/imagenet_classes.py.",
    ]
    args.out.write_text("\n".join(header + names) + "\n")
    print(f"wrote {len(names)} names to {args.out}")


if __name__ == "__main__":
    main()
