"""Helpers of scripts/demo.sh: build the demo scene, show the events, check them against the truth.

    python demo/demo.py scene --out WORK/scene.avi      # frames + WORK/scene.json (ground truth)
    python -m device run ... | python demo/demo.py show --truth WORK/scene.json --events FILE
    python demo/demo.py report --truth WORK/scene.json --events FILE --enrolled demo/enroll

The scene places the products of demo/enroll/<product>/ (their 2nd and 4th photos: the product
is put down again in front of the camera it was enrolled with) and the never-enrolled products of
demo/unknown/<product>/, one at a time, onto demo/background.jpg by `device.synthetic` (other
positions and sizes, sensor noise, slow lighting drift), each product placed and removed twice in an
interleaved order. The device must name the enrolled ones and report the others as unknown.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

DEMO_DIR = Path(__file__).resolve().parent
# `python demo/demo.py` puts demo/ first on sys.path; the device package is one level up.
sys.path.insert(1, str(DEMO_DIR.parent))

from device.crop import iou  # noqa: E402 - needs the path above

FPS = 15.0


def scene_order(photos: dict[str, list[Path]]) -> list[tuple[str, Path]]:
    """Round r places each product's r-th photo, the product list rotated by 2 per round, so no
    product follows itself and every product is placed once per round."""
    products = sorted(photos)
    rounds = max(len(v) for v in photos.values())
    order = []
    for r in range(rounds):
        shift = (2 * r) % len(products)
        for product in products[shift:] + products[:shift]:
            if r < len(photos[product]):
                order.append((product, photos[product][r]))
    return order


ENROLLED_SHOTS_IN_SCENE = (1, 3)  # indices into each enrolled product's sorted photos


def scene_photos(enroll_dir: Path, unknown_dir: Path) -> dict[str, list[Path]]:
    """Product -> the photos the scene places: two enrollment shots of each enrolled product (the
    same item put down again; other positions, sizes, noise and lighting in the scene) and every
    photo of the never-enrolled products."""
    from device.images import list_images

    photos: dict[str, list[Path]] = {}
    for sub in sorted(p for p in enroll_dir.iterdir() if p.is_dir()):
        shots = list_images(sub)
        photos[sub.name] = [shots[i] for i in ENROLLED_SHOTS_IN_SCENE if i < len(shots)]
    for sub in sorted(p for p in unknown_dir.iterdir() if p.is_dir()):
        photos[sub.name] = list_images(sub)
    photos = {k: v for k, v in photos.items() if v}
    if not photos:
        raise ValueError(f"{enroll_dir} and {unknown_dir} hold no <product>/*.jpg folders")
    return photos


def build_scene(
    enroll_dir: Path,
    unknown_dir: Path,
    background_path: Path,
    out: Path,
    *,
    seed: int = 0,
    fps: float = FPS,
) -> Path:
    from device.images import load_image
    from device.synthetic import SyntheticScene, SyntheticSource, make_schedule, write_frames

    photos = scene_photos(enroll_dir, unknown_dir)
    background = load_image(background_path)
    height, width = background.shape[:2]
    order = [(label, load_image(path)) for label, path in scene_order(photos)]
    # 2 s empty at the start (the background is learnt), each product held 2 s, 1.3 s between.
    placements, n_frames = make_schedule(
        order, width=width, height=height, seed=seed, lead_in=30, hold=30, gap=20
    )
    scene = SyntheticScene(width, height, seed=seed, noise=2.0, drift=0.1, background=background)
    return write_frames(SyntheticSource(scene, placements, n_frames), out, fps=fps)


# --- events against the truth ---------------------------------------------------------------------


def load_truth(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text(encoding="utf-8"))["placements"])


def placement_of(event: dict[str, Any], truth: Sequence[dict[str, Any]]) -> int | None:
    """Index of the placement on screen when the event was reported (events count frames from 1)."""
    index = int(event["frame"]) - 1
    for i, p in enumerate(truth):
        if p["start"] <= index < p["end"]:
            return i
    return None


def describe(event: dict[str, Any], truth: Sequence[dict[str, Any]], enrolled: set[str]) -> str:
    i = placement_of(event, truth)
    seconds = (int(event["frame"]) - 1) / FPS
    shown = truth[i]["label"] if i is not None else None
    what = event["label"]
    if event["status"] == "ambiguous":
        what = f"AMBIGUOUS ({event['best']}?)"
    elif event["status"] != "known":
        what = f"UNKNOWN (best: {event['best']})"
    line = f"[{seconds:5.1f} s] {what:<34} score {event['score']:.3f}"
    if event.get("runner_up"):
        line += f"  (runner-up {event['runner_up']} {event['runner_up_score']:.3f})"
    line += f"  {event['latency_ms']:.0f} ms"
    if shown is None:
        return line + "   <- nothing was placed"
    expected = shown if shown in enrolled else "unknown"
    got = event["label"] if event["status"] == "known" else event["status"]
    verdict = "ok" if got == expected else f"WRONG: expected {expected}"
    note = "" if shown in enrolled else f" (never enrolled: {shown})"
    return f"{line}   {verdict}{note}"


def show(
    lines: TextIO,
    out: TextIO,
    raw: TextIO | None,
    truth: Sequence[dict[str, Any]],
    enrolled: set[str],
) -> None:
    """Print each event line of `python -m device run` readably as it arrives; keep the raw JSON."""
    for line in lines:
        if raw is not None:
            raw.write(line)
            raw.flush()
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            out.write(line)
            continue
        out.write(describe(event, truth, enrolled) + "\n")
        out.flush()


def report(
    events: Sequence[dict[str, Any]], truth: Sequence[dict[str, Any]], enrolled: set[str]
) -> tuple[bool, str]:
    """The demo's verdict: one event per placement, enrolled products named right, the others
    reported unknown, no event while nothing was placed."""
    per_placement: list[list[dict[str, Any]]] = [[] for _ in truth]
    spurious = 0
    for event in events:
        i = placement_of(event, truth)
        if i is None:
            spurious += 1
        else:
            per_placement[i].append(event)
    known_total = known_right = unknown_total = unknown_right = 0
    missed = repeated = 0
    ious = []
    unknown_names = sorted({p["label"] for p in truth if p["label"] not in enrolled})
    for p, evs in zip(truth, per_placement, strict=True):
        is_known = p["label"] in enrolled
        known_total += is_known
        unknown_total += not is_known
        if not evs:
            missed += 1
            continue
        repeated += len(evs) - 1
        ev = evs[0]
        ious.append(iou(tuple(ev["box"]), tuple(p["box"])))
        if is_known:
            known_right += ev["status"] == "known" and ev["label"] == p["label"]
        else:
            unknown_right += ev["status"] == "unknown"
    passed = (
        known_right == known_total
        and unknown_right == unknown_total
        and missed == 0
        and repeated == 0
        and spurious == 0
    )
    parts = [
        f"{len(truth)} placements",
        f"{known_right}/{known_total} enrolled recognised right",
        f"{unknown_right}/{unknown_total} unknown reported for the unenrolled product "
        f"({', '.join(unknown_names) or 'none'})",
    ]
    if missed:
        parts.append(f"{missed} missed")
    if repeated:
        parts.append(f"{repeated} repeated")
    if spurious:
        parts.append(f"{spurious} events with nothing placed")
    if ious:
        parts.append(f"mean box IoU {float(np.mean(ious)):.2f}")
    return passed, "demo: " + ", ".join(parts) + (" -> PASS" if passed else " -> FAIL")


def read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def enrolled_products(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo/demo.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("scene", help="render the demo scene to a video + ground-truth JSON")
    p.add_argument("--enroll", type=Path, default=DEMO_DIR / "enroll")
    p.add_argument("--unknown", type=Path, default=DEMO_DIR / "unknown")
    p.add_argument("--background", type=Path, default=DEMO_DIR / "background.jpg")
    p.add_argument("--out", type=Path, required=True, help="video file (.avi)")
    p.add_argument("--seed", type=int, default=0)
    for name in ("show", "report"):
        p = sub.add_parser(name)
        p.add_argument("--truth", type=Path, required=True, help="the scene's JSON")
        p.add_argument("--events", type=Path, required=True, help="JSON lines of the events")
        p.add_argument("--enrolled", type=Path, default=DEMO_DIR / "enroll")
    args = parser.parse_args(argv)

    if args.cmd == "scene":
        out = build_scene(args.enroll, args.unknown, args.background, args.out, seed=args.seed)
        truth = load_truth(out.with_suffix(".json"))
        labels = sorted({p["label"] for p in truth})
        print(f"scene: {len(truth)} placements of {len(labels)} products -> {out}")
        return 0
    truth = load_truth(args.truth)
    enrolled = enrolled_products(args.enrolled)
    if args.cmd == "show":
        with open(args.events, "w", encoding="utf-8") as raw:
            show(sys.stdin, sys.stdout, raw, truth, enrolled)
        return 0
    passed, summary = report(read_events(args.events), truth, enrolled)
    print(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
