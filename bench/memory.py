"""Peak resident memory of the device's bulk commands (issue: hardening for a 1 GB Pi).

    python bench/memory.py --model models/default [--photos 16] [--products 1000] [--reembed]

Measures, each in a fresh `python -m device ...` process (peak RSS = VmHWM of that process):
  - `enroll --from-images` of `--photos` synthetic 12-megapixel JPEGs (4000x3000, the demo's
    product photos enlarged with sensor-like noise, four products), and for comparison the same
    command on the original small photos;
  - `gallery import` of an export of `--products` products x 4 views (distinct 320 px JPEG crops
    made from the fixture photos, embeddings of the bundle's size), made by the same model (the
    usual case: moving products to another device), and with `--reembed` also one made by another
    model (every view re-embedded from its crop).
Target: each <= 300 MB. Prints a markdown table (for docs/BENCHMARKS.md) with the command and
commit.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As `python -m device` does (device/__main__.py): one BLAS thread, set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.grocery_protocol import commit_id  # noqa: E402
from device.gallery import Gallery, encode_jpeg  # noqa: E402

DEMO_PHOTOS = ROOT / "demo" / "enroll"
FIXTURE = ROOT / "tests" / "fixtures" / "grocery" / "test"
TARGET_MB = 300.0

# Runs `python -m device ARGS...` and prints its peak RSS (kB) as the last line of stderr.
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec() from the (bigger) parent.
_PEAK = (
    "import resource, runpy, sys\n"
    "sys.argv = ['device'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('device', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    rc = e.code\n"
    "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')]\n"
    "print(hwm[0].split()[1] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def device_peak_rss(args: list[str], timeout_s: float = 1800) -> tuple[float, float, str]:
    """(peak RSS MB, wall seconds, stdout) of `python -m device ARGS` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"python -m device {' '.join(args)} failed: {proc.stderr}")
    return int(proc.stderr.strip().splitlines()[-1]) / 1024.0, wall, proc.stdout


def big_photos(out: Path, n: int, size: tuple[int, int] = (4000, 3000)) -> int:
    """`n` JPEGs of `size` (width, height) in out/<product>/: the demo's product photos enlarged,
    with per-pixel noise so they compress like camera photos (several MB each); their bytes."""
    import cv2

    from device.images import list_images, load_image

    sources = [p for sub in sorted(DEMO_PHOTOS.iterdir()) if sub.is_dir() for p in list_images(sub)]
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        src = sources[i % len(sources)]
        image = cv2.resize(load_image(src), size, interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0.0, 6.0, size=(size[1], size[0], 1)).astype(np.float32)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        folder = out / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:02d}_{src.stem}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        total += path.stat().st_size
        del image, noise
    return total


def export_of(tmp: Path, n_products: int, dim: int, model_id: str, views: int = 4) -> Path:
    """An export file of n_products x views random unit embeddings with distinct 320 px crops."""
    import cv2

    from device.images import list_images, load_image
    from device.transfer import export_gallery

    photos = [load_image(p) for sub in sorted(FIXTURE.iterdir()) for p in list_images(sub)]
    rng = np.random.default_rng(1)
    db = tmp / f"source-{model_id[:8]}.db"
    with Gallery(db) as g, g.transaction() as c:
        for i in range(n_products):
            embs = rng.normal(size=(views, dim)).astype(np.float32)
            embs /= np.linalg.norm(embs, axis=1, keepdims=True)
            rows = []
            for e in embs:
                photo = photos[int(rng.integers(len(photos)))]
                h, w = photo.shape[:2]
                x, y = (int(v) for v in rng.integers(0, 40, size=2))
                crop = cv2.resize(photo[y : h - 40 + y, x : w - 40 + x], (320, 320))
                rows.append((e.tobytes(), dim, encode_jpeg(crop, 320)))
            g.insert_product(f"product {i:05d}", None, rows, model_id, conn=c)
    out = tmp / f"export-{model_id[:8]}.zip"
    with Gallery(db) as g:
        export_gallery(g, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, required=True, help="model bundle directory")
    ap.add_argument("--photos", type=int, default=16, help="12-megapixel photos to enroll")
    ap.add_argument("--products", type=int, default=1000, help="products (x4 views) to import")
    ap.add_argument(
        "--reembed",
        action="store_true",
        help="also import an export made by another model (every view re-embedded; slow)",
    )
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from device.bundle import embedding_id, read_bundle_meta
    from device.runtime import runtime_name

    commit_id()  # the commit the run starts from (cached)
    meta = read_bundle_meta(args.model)
    model = ["--model", str(args.model), "--log-level", "WARNING"]
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        nbytes = big_photos(tmp / "photos", args.photos)
        rss, wall, _ = device_peak_rss(
            ["enroll", "--from-images", str(tmp / "photos"), "--db", str(tmp / "e.db"), *model]
        )
        rows.append(
            (
                f"`enroll --from-images`: {args.photos} JPEGs of 4000x3000 px "
                f"({nbytes / args.photos / 1e6:.1f} MB each)",
                rss,
                wall,
            )
        )
        rss, wall, _ = device_peak_rss(
            ["enroll", "--from-images", str(DEMO_PHOTOS), "--db", str(tmp / "e0.db"), *model]
        )
        rows.append(
            (
                "`enroll --from-images demo/enroll` (16 photos of 348x348 px), for comparison",
                rss,
                wall,
            )
        )
        # The key the device stores this bundle's embeddings under: an export of it is not
        # re-embedded; "0" * 64 stands for another model.
        same = embedding_id(meta)
        models = [same] + (["0" * 64] if args.reembed else [])
        for model_id in models:
            export = export_of(tmp, args.products, meta.output.embedding_dim, model_id)
            db = tmp / f"import-{model_id[:8]}.db"
            rss, wall, _ = device_peak_rss(
                ["gallery", "import", str(export), "--db", str(db), *model]
            )
            how = "same model" if model_id == same else "another model: all re-embedded"
            rows.append(
                (
                    f"`gallery import`: {args.products} products x 4 views "
                    f"({export.stat().st_size / 1e6:.0f} MB export; {how})",
                    rss,
                    wall,
                )
            )
    commit = commit_id()
    reembed = " --reembed" if args.reembed else ""
    print(
        f"`python bench/memory.py --model {args.model} --photos {args.photos} --products "
        f"{args.products}{reembed}` at commit {commit}; {platform.machine()}, {os.cpu_count()} "
        f"cores, Python {platform.python_version()}, numpy {np.__version__}, runtime "
        f"{runtime_name()}; peak RSS = VmHWM of the `python -m device` process.\n"
    )
    print(f"| command | peak RSS | wall time | target <= {TARGET_MB:.0f} MB |")
    print("|---|---|---|---|")
    for what, rss, wall in rows:
        verdict = "" if "comparison" in what else ("met" if rss <= TARGET_MB else "NOT met")
        print(f"| {what} | {rss:.0f} MB | {wall:.1f} s | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
