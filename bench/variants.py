"""Two ideas for open-set rejection on protocol v1, tried on finished benchmark runs (not adopted).

    python bench/variants.py RUN_DIR [RUN_DIR ...] [--data ../shared/data/grocery]

RUN_DIR is a `bench/grocery_protocol.py` output folder (run/extractor.keras, bundle-int8/).
For each run it scores the protocol's held-out products (4 enrollment shots, best view, as
`training evaluate --protocol` does) with:
  - test-time augmentation through the int8 bundle and the device's own `Embedder`: the mean
    embedding of the image and its mirror image ("flip"), of the image and its central 85 %
    ("centre"), or all three, applied to queries and enrollment shots alike (2-3x the inferences);
  - the float Keras extractor's other features: the backbone's pooled 1280-d features ("GAP")
    instead of the trained embedding, and both concatenated (each L2-normalised).
Prints a markdown table of P@1 and leave-class-out AUROC.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device.images import load_image  # noqa: E402
from training.metrics import (  # noqa: E402
    l2_normalize,
    p_at_1_and_auroc,
    product_scores,
    similarity,
)
from training.protocol import read_protocol  # noqa: E402

CENTRE = 0.85
Flat = tuple[list[str], list[Path]]  # (product of each image, image paths)


def _flat(split: dict[str, list[Path]]) -> Flat:
    return [p for p, fs in split.items() for _ in fs], [f for fs in split.values() for f in fs]


def protocol_split(data: Path) -> tuple[Flat, Flat]:
    """The protocol's enrollment shots and its queries."""
    proto = read_protocol(data / "protocol.json")
    return _flat(proto.enroll), _flat(proto.query)


def scores(
    enroll: np.ndarray, e_labels: list[str], query: np.ndarray, q_labels: list[str]
) -> tuple[float, float]:
    """(P@1, leave-class-out AUROC), best view per product, as `training evaluate` computes them."""
    sim = similarity(l2_normalize(query), l2_normalize(enroll))
    return p_at_1_and_auroc(*product_scores(sim, e_labels), q_labels)


def views(image: np.ndarray) -> dict[str, list[np.ndarray]]:
    h, w = image.shape[:2]
    y0, x0 = int(h * (1 - CENTRE) / 2), int(w * (1 - CENTRE) / 2)
    centre = np.ascontiguousarray(image[y0 : h - y0, x0 : w - x0])
    mirror = np.ascontiguousarray(image[:, ::-1])
    return {
        "plain": [image],
        "flip": [image, mirror],
        "centre": [image, centre],
        "flip + centre": [image, mirror, centre],
    }


def tta_embeddings(bundle: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    from device.embedder import Embedder

    out: dict[str, list[np.ndarray]] = {}
    with Embedder(bundle, num_threads=2) as emb:
        for path in paths:
            for name, images in views(load_image(path)).items():
                out.setdefault(name, []).append(np.mean([emb.embed(i) for i in images], axis=0))
    return {name: np.stack(v) for name, v in out.items()}


def keras_features(run: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    import keras

    from device.bundle import InputSpec
    from device.preprocess import resize_rgb
    from training.model import load_extractor

    ext = load_extractor(run / "extractor.keras")
    size = int(ext.input_shape[1])
    spec = InputSpec(width=size, height=size)
    both = keras.Model(ext.inputs, [ext.get_layer("pool").output, ext.output])
    x = np.stack([resize_rgb(load_image(p), spec) for p in paths]).astype(np.float32)
    gap, emb = both.predict(x, batch_size=32, verbose=0)
    concat = np.hstack([l2_normalize(gap), l2_normalize(emb)])
    return {"embedding": emb, "GAP": gap, "GAP + embedding": concat}


def table_rows(run: Path, data: Path) -> list[str]:
    (e_labels, e_paths), (q_labels, q_paths) = protocol_split(data)
    rows = []
    sources: list[tuple[str, Callable[[list[Path]], dict[str, np.ndarray]]]] = [
        ("int8, device Embedder", lambda p: tta_embeddings(run / "bundle-int8", p)),
        ("float Keras", lambda p: keras_features(run / "run", p)),
    ]
    for model, fn in sources:
        enroll, query = fn(e_paths), fn(q_paths)
        for name in enroll:
            p1, roc = scores(enroll[name], e_labels, query[name], q_labels)
            rows.append(f"| `{run.name}` | {model} | {name} | {p1:.3f} | {roc:.3f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="bench/grocery_protocol.py output folders")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not (args.data / "protocol.json").is_file():
        print(f"error: no protocol.json in {args.data}: pass --data DIR", file=sys.stderr)
        return 2
    for run in args.runs:
        missing = [
            n for n in ("run/extractor.keras", "bundle-int8/model.json") if not (run / n).is_file()
        ]
        if missing:
            print(
                f"error: {run} is not a finished benchmark run (missing {', '.join(missing)})",
                file=sys.stderr,
            )
            return 2
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"`python bench/variants.py {' '.join(str(r) for r in args.runs)}` at commit {commit}\n")
    print("| run | model | features | P@1 | AUROC (leave-class-out) |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        table_rows(run, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
