"""Speed and footprint of the device app, as ratios measured in one run (issue: device app).

    python bench/device_speed.py --model BUNDLE [--threads 2] [--products 1000]

Measures, with a 640x480 synthetic source held in memory (each frame copied out, as a camera
driver's buffer is) and the given bundle:
  - the bare interpreter call (set_tensor + invoke + get_tensor on a ready input tensor);
  - a frame with nothing new: the service's per-frame work (detection, placement, background
    adaptation) on an empty scene, as a fraction of one inference (target <= 10 %);
  - the frame on which a placement is recognised: capture copy, detection, crop, preprocessing,
    inference, matching against `--products` products x 4 views, publishing the event (the JSON
    line and the event row are written by the event bus's sink threads, off the frame),
    relative to the bare interpreter call (target <= 1.15x);
  - one query against 10,000 and 100,000 stored views (target <= 1 ms for 10,000);
  - peak resident memory of `python -m device run` with `--products` products in its database
    (and with none, for comparison);
  - the web page (`[web]`, on by default): the frame costs above with the web server's thread
    running and nobody watching, against the same without it (alternating blocks); and `device
    run` in real time on an endless synthetic scene (`synthetic-live:`, 15 fps) three ways, web
    off / web on with no viewer / web on with one live viewer (the live image at the default
    [web] live_fps plus the recognition stream, as the page does): CPU time of the process
    over the same wall-clock window and its peak resident memory. `--web-only` measures only these.
Prints a markdown table (for docs/BENCHMARKS.md) with the command, commit and machine.

The recognition frame is also compared with the interpreter call made inside it: on a busy machine
an isolated call with 2 threads is much slower than one in a tight loop (the runtime's worker
thread must be woken and scheduled), which is the runtime's cost, not the app's; the in-frame
comparison isolates what the app adds (capture, subtraction, crop, preprocessing, matching,
reporting).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# As `python -m device` does (device/__main__.py): one BLAS thread, set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device.config import Config  # noqa: E402
from device.gallery import Gallery, encode_jpeg  # noqa: E402
from device.matcher import Matcher  # noqa: E402
from device.synthetic import SyntheticScene, load_photos, make_schedule  # noqa: E402

PHOTOS = ROOT / "tests" / "fixtures" / "grocery" / "test"


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def ready_interpreter(model_path: Path, threads: int) -> tuple[Any, int, int, np.ndarray]:
    """(interpreter, input index, output index, a ready input tensor) for the bundle."""
    from device.bundle import read_bundle_meta
    from device.preprocess import prepare
    from device.runtime import load_interpreter

    meta = read_bundle_meta(model_path)
    interp = load_interpreter(model_path / meta.model_file, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    tensor = prepare(np.full((200, 200, 3), 128, np.uint8), meta.input)
    return interp, int(inp["index"]), int(out["index"]), tensor


def bare_invoke(model_path: Path, threads: int, runs: int) -> list[float]:
    interp, inp, out, tensor = ready_interpreter(model_path, threads)
    for _ in range(10):
        interp.set_tensor(inp, tensor)
        interp.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.set_tensor(inp, tensor)
        interp.invoke()
        interp.get_tensor(out)
        times.append(time.perf_counter() - t0)
    return times


def capture_floor(model_path: Path, threads: int, runs: int) -> tuple[list[float], list[float]]:
    """(bare calls, capture + call) timed alternately: the least a recognition frame can cost.

    "capture + call" copies a 640x480 frame out (as a camera read does) and makes the same
    interpreter call on a ready tensor: no detection, crop, preprocessing or matching, i.e. no app
    code at all. Alternating the two keeps this machine's speed drift out of their ratio."""
    interp, inp, out, tensor = ready_interpreter(model_path, threads)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    bare, floor = [], []
    for i in range(runs + 10):
        t0 = time.perf_counter()
        if i % 2:
            frame.copy()
        interp.set_tensor(inp, tensor)
        interp.invoke()
        interp.get_tensor(out)
        if i >= 10:
            (floor if i % 2 else bare).append(time.perf_counter() - t0)
    return bare, floor


class BankSource:
    """In-memory frames: `gap` empty frames, then `hold` frames of a placement, for each placement;
    every read returns a copy (what a camera driver's capture costs)."""

    finite = True

    def __init__(
        self, scene: SyntheticScene, placements: list, hold: int, gap: int, lead_in: int, k: int = 4
    ) -> None:
        self.empty = [scene.render(i) for i in range(k)]
        self.placed = [[scene.render(i, [(p.image, p.box)]) for i in range(k)] for p in placements]
        self.sequence: list[np.ndarray] = [self.empty[i % k] for i in range(lead_in)]
        for bank in self.placed:
            self.sequence += [bank[i % k] for i in range(hold)]
            self.sequence += [self.empty[i % k] for i in range(gap)]
        self.index = 0

    def read(self) -> np.ndarray | None:
        if self.index >= len(self.sequence):
            return None
        frame = self.sequence[self.index].copy()
        self.index += 1
        return frame

    def close(self) -> None:
        pass


def fill_gallery(db: Path, n_products: int, dim: int, model_id: str, views: int = 4) -> None:
    """n_products x views random unit vectors with realistic JPEG crops (one per product)."""
    from device.images import load_image

    rng = np.random.default_rng(0)
    photo = load_image(next(iter(sorted(PHOTOS.glob("*/*.jpg")))))
    crop = encode_jpeg(photo, 320)  # a real product photo at the stored crop size
    with Gallery(db) as g, g.transaction() as c:
        for i in range(n_products):
            embs = rng.normal(size=(views, dim)).astype(np.float32)
            embs /= np.linalg.norm(embs, axis=1, keepdims=True)
            g.insert_product(
                f"product {i:05d}", None, [(e.tobytes(), dim, crop) for e in embs], model_id, conn=c
            )


def timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    """`fn`, appending the seconds of each call to `sink`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sink.append(time.perf_counter() - t0)
        return out

    return wrapper


def frame_costs(model: Path, threads: int, products: int, tmp: Path) -> dict[str, float]:
    from device.embedder import Embedder
    from device.service import Service

    cfg = Config().replace("gallery", path=str(tmp / "frames.db")).replace("matcher", threshold=0.5)
    photos = load_photos(PHOTOS, per_product=1)
    hold, gap, lead_in = 12, 12, 20
    placements, _ = make_schedule(photos * 3, seed=0, hold=hold, gap=gap, lead_in=lead_in)
    scene = SyntheticScene(640, 480, seed=0, noise=2.0, drift=0.0)
    source = BankSource(scene, placements, hold, gap, lead_in)
    with Embedder(model, num_threads=threads) as emb:
        fill_gallery(Path(cfg.gallery.path), products, emb.dim, emb.embedding_id)
        import device.embedder as embedder_module

        calls: list[float] = []  # the interpreter call (set, invoke, get) inside each frame
        prep: list[float] = []  # preprocessing (resize + colour order of the crop) in each frame
        prepare = embedder_module.prepare
        emb._run = timed(emb._run, calls)  # type: ignore[method-assign]
        embedder_module.prepare = timed(prepare, prep)
        with Gallery(cfg.gallery.path) as g:
            service = Service(
                cfg, source_factory=lambda: source, embedder=emb, gallery=g, out=io.StringIO()
            )
            detect_times: list[float] = []  # detection on every frame (kept for recognised ones)
            match_times: list[float] = []
            matcher = service.recognizer.matcher
            service.detector.detect = timed(service.detector.detect, detect_times)  # type: ignore[method-assign]
            matcher.match = timed(matcher.match, match_times)  # type: ignore[method-assign]
            empty, recog, embed_only, recog_detect = [], [], [], []
            learn = cfg.detector.learn_frames
            n = 0
            while True:
                t0 = time.perf_counter()
                frame = source.read()
                if frame is None:
                    break
                before = service.stats.n_events
                service.stats.frames += 1
                service._process(frame, t0)
                dt = time.perf_counter() - t0
                n += 1
                if service.stats.n_events > before:
                    recog.append(dt)
                    recog_detect.append(detect_times[-1])
                elif n > learn and service.tracker.is_empty and service.detector.ready:
                    empty.append(dt)
            assert service.recognizer.matcher is matcher, "the gallery was reloaded mid-run"
            assert len(calls) == len(recog) == len(prep) == len(match_times)
            in_frame = list(calls)  # the embed-only loop below must not add to it
            prep_ms = median_ms(prep)
            embedder_module.prepare = prepare
            overhead = [r - c for r, c in zip(recog, in_frame, strict=True)]
            crop = source.placed[0][0][100:300, 200:400]
            for _ in range(50):
                t0 = time.perf_counter()
                emb.embed(crop)
                embed_only.append(time.perf_counter() - t0)
            assert service.stats.n_events == len(placements), "a placement was missed"
            service.bus.close()  # the outputs' threads (the loop itself closes them in `run`)
    return {
        "empty_ms": median_ms(empty),
        "empty_p90_ms": float(np.percentile(empty, 90) * 1000),
        "empty_mean_ms": float(np.mean(empty) * 1000),
        "recog_ms": median_ms(recog),
        "in_frame_ms": median_ms(in_frame),
        "prep_ms": prep_ms,
        "detect_ms": median_ms(recog_detect),
        "match_ms": median_ms(match_times),
        "overhead_ms": median_ms(overhead),
        "recog_ratio_in_frame": statistics.median(
            r / c for r, c in zip(recog, in_frame, strict=True)
        ),
        "embed_ms": median_ms(embed_only),
        "n_empty": len(empty),
        "n_recog": len(recog),
    }


def query_ms(n_views: int, dim: int, runs: int = 200) -> float:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(n_views, dim)).astype(np.float32)
    labels = [f"p{i // 4}" for i in range(n_views)]
    m = Matcher(emb, labels, threshold=0.5, ambiguity_margin=0.02)
    qs = rng.normal(size=(runs, dim)).astype(np.float32)
    for q in qs[:10]:
        m.match(q)
    times = []
    for q in qs:
        t0 = time.perf_counter()
        m.match(q)
        times.append(time.perf_counter() - t0)
    return median_ms(times)


def run_rss_mb(model: Path, db: Path, frames: int) -> tuple[float, int]:
    """Peak RSS (MB) of `python -m device run` over `frames` frames of the demo scene."""
    from bench.memory import device_peak_rss

    rss, _, stdout = device_peak_rss(
        [
            "run",
            "--model",
            str(model),
            "--db",
            str(db),
            "--threshold",
            "0.5",
            "--source",
            f"synthetic:{PHOTOS}",
            "--max-frames",
            str(frames),
            "--log-level",
            "WARNING",
            "--no-web",  # the footprint before the web page; with it: web_rows
        ],
        timeout_s=600,
    )
    return rss, len(stdout.splitlines())


# --- the web page ----------------------------------------------------------------------------------


def frame_costs_with_web(
    model: Path, threads: int, products: int, tmp: Path, rounds: int = 2
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """frame_costs without and with an idle web server thread in the process, alternating
    (off, on, off, on, ...) so that the machine's drift falls on both alike."""
    from device.app import DeviceApp
    from device.web.server import WebServer

    off, on = [], []
    for i in range(rounds):
        off.append(frame_costs(model, threads, products, tmp / f"off{i}"))
        cfg = Config().replace("gallery", path=str(tmp / f"web{i}.db"))
        with (
            DeviceApp(cfg, out=io.StringIO()) as app,
            WebServer(app, cfg, None, port=0),
        ):
            on.append(frame_costs(model, threads, products, tmp / f"on{i}"))
    return off, on


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class Viewer:
    """What one open live page asks for: the live image [web] live_fps times a second, and the
    recognition stream held open."""

    def __init__(self, url: str, fps: float) -> None:
        import threading

        self.url, self.period = url, 1.0 / fps
        self.stop = threading.Event()
        self.images = 0
        self.threads = [
            threading.Thread(target=self._images, daemon=True),
            threading.Thread(target=self._stream, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _images(self) -> None:
        import urllib.request

        while not self.stop.is_set():
            t0 = time.monotonic()
            with urllib.request.urlopen(f"{self.url}/api/live.jpg", timeout=10) as r:
                r.read()
                self.images += 1
            self.stop.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def _stream(self) -> None:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/api/live/events", timeout=60) as r:
            while not self.stop.is_set() and r.readline():
                pass

    def close(self) -> None:
        self.stop.set()


def run_live(model: Path, threads: int, tmp: Path, mode: str, seconds: float) -> dict[str, float]:
    """`device run` on synthetic-live (15 fps): CPU % of one core and MB, `mode` one of "off",
    "idle", "viewer"."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tmp / f"live-{mode}.toml"
    cfg.write_text(
        f'[camera]\nsource = "synthetic-live:{PHOTOS}"\nfps = 15.0\n'
        f'[model]\npath = "{model}"\nnum_threads = {threads}\n'
        f'[gallery]\npath = "{tmp / f"live-{mode}.db"}"\n[matcher]\nthreshold = 0.5\n'
        f"[web]\nenabled = {'false' if mode == 'off' else 'true'}\nport = {port}\n"
        '[service]\nlog_level = "WARNING"\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "run", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    viewer = None
    try:
        time.sleep(10.0)  # model load, background learning, the first placements
        if proc.poll() is not None:
            raise RuntimeError(f"device run failed: {proc.stderr.read().decode()}")
        deadline = time.monotonic() + 60
        while mode != "off":  # serving, and frames arriving
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
                    r.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        if mode == "viewer":
            viewer = Viewer(url, Config().web.live_fps)
            time.sleep(2.0)
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
        out = {
            "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
            "hwm_mb": _vm(proc.pid, "VmHWM"),
            "rss_mb": _vm(proc.pid, "VmRSS"),
            "images": float(viewer.images) if viewer else 0.0,
        }
    finally:
        if viewer is not None:
            viewer.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def web_rows(model: Path, threads: int, products: int, seconds: float, tmp: Path) -> list[str]:
    off, on = frame_costs_with_web(model, threads, products, tmp)
    live: dict[str, list[dict[str, float]]] = {"off": [], "idle": [], "viewer": []}
    for _ in range(2):  # alternating, twice: the machine's load drifts
        for mode in live:
            live[mode].append(run_live(model, threads, tmp, mode, seconds))

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def per_run(rows: list[dict[str, float]], key: str, fmt: str = "{:.3f}") -> str:
        return ", ".join(fmt.format(r[key]) for r in rows)

    cpu = {m: med(r, "cpu_pct") for m, r in live.items()}
    hwm = {m: max(x["hwm_mb"] for x in r) for m, r in live.items()}
    images = sum(x["images"] for x in live["viewer"])
    lines = [
        "| web page (`[web]`) | web off | web on, nobody watching | |",
        "|---|---|---|---|",
        f"| frame with nothing new, median ms (per round, alternating) | {per_run(off, 'empty_ms')} "
        f"| {per_run(on, 'empty_ms')} | unchanged within noise |",
        f"| frame on which a placement is recognised, median ms | {per_run(off, 'recog_ms')} | "
        f"{per_run(on, 'recog_ms')} | unchanged within noise |",
        "",
        f"`device run` in real time (`synthetic-live:` of the 8 fixture products, 640x480, 15 fps, "
        f"threshold 0.5, no products stored), CPU time over {seconds:.0f} s windows, two runs of "
        "each, alternating; one viewer = the live image at the default [web] live_fps "
        f"({Config().web.live_fps:g}/s) plus the recognition stream "
        f"({images:.0f} images fetched in all):",
        "",
        "| | web off (`--no-web`) | web on, no viewer | web on, one live viewer |",
        "|---|---|---|---|",
        f"| CPU, % of one core (median; runs) | {cpu['off']:.1f} ({per_run(live['off'], 'cpu_pct', '{:.1f}')}) "
        f"| {cpu['idle']:.1f} ({per_run(live['idle'], 'cpu_pct', '{:.1f}')}) "
        f"| {cpu['viewer']:.1f} ({per_run(live['viewer'], 'cpu_pct', '{:.1f}')}) |",
        f"| added CPU vs web off | | {cpu['idle'] - cpu['off']:+.1f} points | "
        f"**{cpu['viewer'] - cpu['off']:+.1f} points** |",
        f"| peak RSS (VmHWM, MB, max of the runs) | {hwm['off']:.0f} | {hwm['idle']:.0f} "
        f"({hwm['idle'] - hwm['off']:+.0f}) | {hwm['viewer']:.0f} (**{hwm['viewer'] - hwm['off']:+.0f}**; "
        "target <= +40) |",
    ]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, required=True, help="model bundle directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--products", type=int, default=1000, help="products (x4 views) in the database"
    )
    ap.add_argument("--runs", type=int, default=200, help="timed interpreter calls")
    ap.add_argument(
        "--web-only", action="store_true", help="measure only the web page's costs (faster)"
    )
    ap.add_argument(
        "--web-seconds", type=float, default=20.0, help="CPU window of each live run (s)"
    )
    args = ap.parse_args()
    if args.runs < 2:
        ap.error("--runs must be at least 2 (half are timed before the frames, half after)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from device.bundle import embedding_id, read_bundle_meta
    from device.runtime import runtime_name

    meta = read_bundle_meta(args.model)
    dim = meta.output.embedding_dim
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    with tempfile.TemporaryDirectory() as tmpdir:
        web = web_rows(args.model, args.threads, args.products, args.web_seconds, Path(tmpdir))
    web_header = (
        f"#### The web page\n\n`python bench/device_speed.py --model {args.model} --threads "
        f"{args.threads} --products {args.products}{' --web-only' if args.web_only else ''}` at "
        f"commit {commit}; {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, runtime {runtime_name()}.\n"
    )
    if args.web_only:
        print(web_header)
        print("\n".join(web))
        return 0
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        # Timed before and after the frames, half each: this machine's speed drifts by tens of
        # percent over a minute, and every ratio below divides by this figure.
        calls = bare_invoke(args.model, args.threads, args.runs // 2)
        costs = frame_costs(args.model, args.threads, args.products, tmp)
        calls += bare_invoke(args.model, args.threads, args.runs - args.runs // 2)
        invoke = median_ms(calls)
        floor_bare, floor = capture_floor(args.model, args.threads, args.runs)
        q10k = query_ms(10_000, dim)
        q100k = query_ms(100_000, dim)
        q10k_128 = query_ms(10_000, 128) if dim != 128 else q10k
        db = tmp / "rss.db"
        fill_gallery(db, args.products, dim, embedding_id(meta))
        rss, n_events = run_rss_mb(args.model, db, 300)
        rss0, _ = run_rss_mb(args.model, tmp / "empty.db", 300)
        db_mb = db.stat().st_size / 1e6

    empty_ratio = costs["empty_ms"] / invoke
    recog_ratio = costs["recog_ms"] / invoke
    print(
        f"### Device speed and footprint ({meta.name}, {meta.provenance.quantization}, "
        f"{meta.input.width}x{meta.input.height} -> {dim})\n"
    )
    print(
        f"`python bench/device_speed.py --model {args.model} --threads {args.threads} --products "
        f"{args.products}` at commit {commit}; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}, runtime {runtime_name()}, "
        f"{args.threads} threads; 640x480 synthetic source in memory (frame copied per read).\n"
    )
    print("| measure | value | target |")
    print("|---|---|---|")
    print(
        f"| bare interpreter call (set_tensor + invoke + get_tensor), median of {args.runs} (half before the frames, half after) | {invoke:.3f} ms | |"
    )
    print(
        f"| `Embedder.embed` of a 200x200 crop (preprocessing + call) | {costs['embed_ms']:.3f} ms | |"
    )
    print(
        f"| frame with nothing new (median of {costs['n_empty']}; mean {costs['empty_mean_ms']:.3f} ms, "
        f"p90 {costs['empty_p90_ms']:.3f} ms) | "
        f"{costs['empty_ms']:.3f} ms = **{100 * empty_ratio:.1f} %** of one inference | <= 10 % |"
    )
    print(
        f"| frame on which a placement is recognised (median of {costs['n_recog']}, "
        f"{args.products} products x 4 views) | {costs['recog_ms']:.3f} ms = **{recog_ratio:.3f}x** "
        f"the bare call | <= 1.15x |"
    )
    print(
        f"| the interpreter call inside those frames / everything else in them (medians) | "
        f"{costs['in_frame_ms']:.3f} ms / {costs['overhead_ms']:.3f} ms: frame = "
        f"**{costs['recog_ratio_in_frame']:.3f}x** its own interpreter call | <= 1.15x |"
    )
    print(
        f"| control, no app code: a frame copy + the same call on a ready tensor, alternating "
        f"with bare calls (medians of {len(floor)} and {len(floor_bare)}) | {median_ms(floor):.3f} ms vs "
        f"{median_ms(floor_bare):.3f} ms: **{median_ms(floor) / median_ms(floor_bare):.3f}x** | |"
    )
    print(
        f"| of which: detection / preprocessing the crop (`prepare`: resize "
        f"'{meta.input.resize}' to {meta.input.width}x{meta.input.height} + colour order) / "
        f"matching, medians in those frames | {costs['detect_ms']:.3f} / {costs['prep_ms']:.3f} / "
        f"{costs['match_ms']:.3f} ms | |"
    )
    print(f"| query against 10,000 views (dim {dim}) | **{q10k:.3f} ms** | <= 1 ms |")
    if dim != 128:
        print(f"| query against 10,000 views (dim 128) | {q10k_128:.3f} ms | |")
    print(
        f"| query against 100,000 views (dim {dim}) | {q100k:.3f} ms ({q100k / q10k:.1f}x the "
        f"10,000-view query; {100_000 * dim * 4 / 1e6:.0f} MB of views read per query) | |"
    )
    print(
        f"| peak RSS of `device run`, {args.products} products x 4 views ({db_mb:.1f} MB database) | "
        f"**{rss:.0f} MB** ({n_events} events in 300 frames) | stated |"
    )
    print(f"| peak RSS of `device run`, no products | {rss0:.0f} MB | |")
    print()
    print(web_header)
    print("\n".join(web))
    return 0


if __name__ == "__main__":
    sys.exit(main())
