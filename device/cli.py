"""`python -m device run|enroll|products|gallery`: the device's command line.

Exit codes (device/exitcodes.py, shared with training and convert): 0 done, 1 stopped/aborted with
nothing changed, 2 bad configuration or arguments, 3 model bundle problem, 4 product database
problem, 5 camera problem, 130 interrupted.
Recognition events go to stdout as JSON lines; everything else (logs, prompts) to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .errors import CameraError, GalleryError, ModelError

# The one scheme (device/exitcodes.py), under the names this module has always used.
from .exitcodes import EXIT_BAD_INPUT as EXIT_CONFIG
from .exitcodes import EXIT_CAMERA, EXIT_GALLERY, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_OK
from .exitcodes import EXIT_FAILED as EXIT_ABORTED

logger = logging.getLogger(__name__)


# Tests replace this to run the CLI with a stand-in model; the real one loads a bundle.
EmbedderFactory = Callable[[str, int], Any]


def _load_embedder(path: str, num_threads: int) -> Any:
    from .app import load_embedder

    # --model may name the bundle's model.json or .tflite instead of its folder.
    return load_embedder(path, num_threads)


embedder_factory: EmbedderFactory = _load_embedder


def _app(cfg: Config, *, create_db: bool = True) -> Any:
    """The application object every command goes through (device/app.py)."""
    from .app import DeviceApp

    # Looked up at call time: tests replace `embedder_factory`.
    return DeviceApp(cfg, embedder_factory=embedder_factory, create_db=create_db)


# --- arguments -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _given(text: str) -> str:
    """An option's value that must say something: an empty --db "" (a variable that was not set)
    must not fall back to the configured database, the production one on a device."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "empty value: give one, or leave the option out to use the configured one"
        )
    return text


def _given_path(text: str) -> Path:
    return Path(_given(text))  # Path("") would be ".", the current folder


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=_given_path, help="TOML config file (default: built-in defaults)"
    )
    common.add_argument(
        "--validate-config",
        action="store_true",
        help="only check the config file: print OK or the problem, exit 0 or 2",
    )
    common.add_argument(
        "--model",
        type=_given,
        help="model bundle directory, or its model.json (overrides [model] path)",
    )
    common.add_argument(
        "--db", type=_given, help="product database file (overrides [gallery] path)"
    )
    common.add_argument(
        "--log-level", type=_given, help="DEBUG, INFO, WARNING or ERROR (overrides [service])"
    )

    with_source = argparse.ArgumentParser(add_help=False)
    with_source.add_argument(
        "--source",
        type=_given,
        help='frame source (overrides [camera] source): "picamera2", a camera index or device '
        '(/dev/video0), a video file, a URL, a folder of images, "synthetic:PHOTOS_DIR" (a '
        'generated scene) or "synthetic-live:PHOTOS_DIR" (the same, endless, in real time)',
    )

    parser = argparse.ArgumentParser(
        prog="python -m device",
        description="Product recognition on the device: run the live loop, enroll products, "
        "manage the product database.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common, with_source], help="the live recognition loop")
    run.add_argument("--max-frames", type=_positive_int, help="stop after this many frames")
    run.add_argument(
        "--save-crops",
        type=_given,
        help="save each event's crop as JPEG in this folder (created if missing; must be writable)",
    )
    run.add_argument("--threshold", type=float, help="override the matching threshold")
    run.add_argument(
        "--no-web", action="store_true", help="do not serve the web page ([web] enabled = false)"
    )

    enroll = sub.add_parser(
        "enroll", parents=[common, with_source], help="add a product (camera-guided or from photos)"
    )
    enroll.add_argument("name", nargs="?", help="product name (with --from-images: optional)")
    enroll.add_argument(
        "--views", type=int, help="number of views to capture (default [enroll] views)"
    )
    enroll.add_argument("--code", help="product code / SKU")
    existing = enroll.add_mutually_exclusive_group()
    existing.add_argument("--append", action="store_true", help="add views to an existing product")
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="with --from-images: leave out the products already stored and add the others (to "
        "finish an interrupted enrollment without storing any product twice)",
    )
    enroll.add_argument(
        "--from-images",
        type=_given_path,
        metavar="DIR",
        help="photos of one product (DIR/*.jpg) or of several (DIR/<product>/*.jpg)",
    )

    products = sub.add_parser("products", help="list, rename, delete or check the stored products")
    psub = products.add_subparsers(dest="action", required=True)
    plist = psub.add_parser("list", parents=[common], help="the stored products")
    plist.add_argument("--json", action="store_true", help="one JSON object per product")
    prename = psub.add_parser("rename", parents=[common], help="rename a product")
    prename.add_argument("old")
    prename.add_argument("new")
    pdelete = psub.add_parser("delete", parents=[common], help="delete a product and its views")
    pdelete.add_argument("name")
    pcheck = psub.add_parser(
        "check",
        parents=[common],
        help="how well the stored products can be told apart (look-alikes, weak products)",
    )
    pcheck.add_argument("--json", action="store_true", help="one JSON object per product")
    pcheck.add_argument("--threshold", type=float, help="judge against this threshold")

    gallery = sub.add_parser(
        "gallery", help="export/import the product set; the recognition events"
    )
    gsub = gallery.add_subparsers(dest="action", required=True)
    gexport = gsub.add_parser(
        "export", parents=[common], help="write every product to one zip file"
    )
    gexport.add_argument("file", type=_given_path)
    gexport.add_argument("--overwrite", action="store_true", help="replace an existing file")
    gimport = gsub.add_parser("import", parents=[common], help="add the products of an export file")
    gimport.add_argument("file", type=_given_path)
    gimport.add_argument("--replace", action="store_true", help="replace products of the same name")
    gevents = gsub.add_parser(
        "events", parents=[common], help="the last recognition events (JSON lines)"
    )
    gevents.add_argument(
        "--limit", type=_positive_int, default=20, help="how many, newest last (default 20)"
    )

    web = sub.add_parser("web", help="the web page served by `run` (password)")
    wsub = web.add_subparsers(dest="action", required=True)
    wpass = wsub.add_parser(
        "set-password",
        parents=[common],
        help="set the web page's password (stored as a salted hash; required for [web] host "
        "beyond 127.0.0.1); restart the service afterwards",
    )
    wpass.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of asking twice",
    )
    _add_outputs_parser(sub, common)
    return parser


def _add_outputs_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    outputs = sub.add_parser("outputs", help="the MQTT, webhook and GPIO outputs of events")
    osub = outputs.add_subparsers(dest="action", required=True)
    otest = osub.add_parser(
        "test",
        parents=[common],
        help="send a test event through every configured output and say what happened",
    )
    otest.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the MQTT broker's connection (default 10)",
    )


def _config(args: argparse.Namespace) -> Config:
    # `is not None`: an option given is used (the parser refuses empty ones), never skipped.
    cfg = load_config(args.config)
    if args.model is not None:
        cfg = cfg.replace("model", path=args.model)
    if args.db is not None:
        cfg = cfg.replace("gallery", path=args.db)
    if args.log_level is not None:
        cfg = cfg.replace("service", log_level=args.log_level.upper())
    if getattr(args, "source", None) is not None:
        cfg = cfg.replace("camera", source=args.source)
    if getattr(args, "save_crops", None) is not None:
        cfg = cfg.replace("service", save_crops=args.save_crops)
    if getattr(args, "threshold", None) is not None:
        try:
            cfg = cfg.replace("matcher", threshold=args.threshold)
        except ConfigError as exc:  # the value came from the flag, not from a file
            raise ConfigError(f"--threshold {args.threshold}: {exc}") from exc
    if getattr(args, "no_web", False):
        cfg = cfg.replace("web", enabled=False)
    if getattr(args, "views", None) is not None:
        cfg = cfg.replace("enroll", views=args.views)
    return cfg


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


# --- commands ------------------------------------------------------------------------------------


def _open_source(cfg: Config) -> Any:
    from .camera import open_source

    c = cfg.camera
    return open_source(c.source, width=c.width, height=c.height, fps=c.fps)


def _check_crop_folder(folder: str) -> None:
    """Create the folder for event crops and check it is writable, at start-up: a bad path must
    stop the start with a message, not fail at the first event."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot save crops in {path}: {exc.strerror or exc}; give --save-crops / [service] "
            "save_crops a folder this user can create and write (under the service, a folder in "
            "/var/lib/prodrec), or leave it out"
        ) from exc


@contextlib.contextmanager
def _kept_only_if_used(db: str) -> Iterator[None]:
    """A product database this command creates is removed again when the command stored nothing
    in it (no usable photo, an aborted enrollment, an empty import): no empty file is left where
    the next command, or the service, would take it for the product set."""
    path = Path(db)
    existed = path.exists()
    try:
        yield
    finally:
        if not existed and path.is_file():
            _remove_if_unused(path)


def _remove_if_unused(path: Path) -> None:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(str(path), timeout=1.0)) as conn:
            # Nothing in it, not even an event: another process (`run`) starting at this very
            # moment would have logged nothing yet either, and would create the file anew.
            used = conn.execute(
                "SELECT (SELECT COUNT(*) FROM products) + (SELECT COUNT(*) FROM events)"
            ).fetchone()[0]
    except sqlite3.Error:
        return  # not ours to judge (or locked by another process): left as it is
    if used:
        return
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    logger.info("nothing was stored: the new database %s was removed again", path)


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from .camera import check_source_library
    from .service import make_notifier
    from .web.runner import check_web, serve_web

    if cfg.service.save_crops:  # checked before the model loads: a typo fails fast
        _check_crop_folder(cfg.service.save_crops)
    # Also before the model loads: a page reachable from the network without a password.
    password_hash = check_web(cfg)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: the loop is stuck in a read; leave now
            raise KeyboardInterrupt
        logger.info("signal %d: stopping", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _app(cfg) as app:
            app.embedder  # noqa: B018 - the model, then the database: as before, a bad model fails first
            app.gallery()
            # The service retries a failing camera; a missing camera library cannot come back.
            check_source_library(cfg.camera.source)
            # The page once the model and database are open; the loop never waits on it.
            with serve_web(app, cfg, password_hash):
                stats = app.run(
                    source_factory=lambda: _open_source(cfg),
                    max_frames=args.max_frames,
                    should_stop=stop.is_set,
                    notifier=make_notifier(),
                )
        logger.info(
            "stopped: %d frames, %d events, %d camera errors",
            stats.frames,
            stats.n_events,
            stats.camera_errors,
        )
        return EXIT_OK
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def cmd_enroll(args: argparse.Namespace, cfg: Config) -> int:
    from .enroll import (
        EnrollAborted,
        EnrollInterrupted,
    )

    if not args.from_images and not args.name:
        raise ValueError('give the product name: python -m device enroll "Name"')
    if args.skip_existing and not args.from_images:
        raise ValueError("--skip-existing applies to --from-images only")
    if args.from_images:
        from .enroll import product_folders

        # Checked before the database is opened: a mistyped folder must not create one.
        plan = product_folders(args.from_images, args.name)
        if args.code and len(plan) > 1:
            raise ValueError(
                f"--code gives one product's code, but {args.from_images} holds {len(plan)} "
                "products: enroll them without --code (or one folder at a time)"
            )
        if args.views is not None:
            raise ValueError("--views is for enrollment from the camera; photos are all used")

    def on_term(signum: int, _frame: object) -> None:
        # Unwinds out of input() or the frame loop; the product being enrolled is not stored.
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    def ask(prompt: str) -> str:
        print(prompt, end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    try:
        with _kept_only_if_used(cfg.gallery.path), _app(cfg) as app:
            embedder = app.embedder
            # The camera before the database: a failing camera must not leave an empty one.
            source = _open_source(cfg) if not args.from_images else contextlib.nullcontext()
            with source:
                return _enroll(args, app.gallery(), embedder, cfg, source, say, ask)
    except EnrollAborted as exc:
        say(f"Enrollment stopped ({exc}): nothing was stored.")
        return EXIT_ABORTED
    except EnrollInterrupted as exc:  # from photos, part way: some whole products were stored
        say(f"\nEnrollment interrupted: {exc.summary()}")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        say("\nEnrollment interrupted: nothing was stored.")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, old)


def _enroll(
    args: argparse.Namespace,
    gallery: Any,
    embedder: Any,
    cfg: Config,
    source: Any,
    say: Callable[[str], None],
    ask: Callable[[str], str],
) -> int:
    from .enroll import enroll_from_images, guided_enroll, stored_views

    if args.from_images:
        enroll_from_images(
            args.from_images,
            embedder=embedder,
            gallery=gallery,
            config=cfg,
            name=args.name,
            code=args.code,
            append=args.append,
            skip_existing=args.skip_existing,
            say=say,
        )
        return EXIT_OK
    before = stored_views(gallery, args.name)
    try:
        guided_enroll(
            args.name,
            source=source,
            embedder=embedder,
            gallery=gallery,
            config=cfg,
            code=args.code,
            append=args.append,
            ask=ask,
            say=say,
        )
    except KeyboardInterrupt:
        # The signal may land just after the product's transaction committed.
        if stored_views(gallery, args.name) > before:
            say(f"\nEnrollment interrupted after {args.name.strip()!r} was stored whole.")
            return EXIT_INTERRUPTED
        raise
    return EXIT_OK


def cmd_products(args: argparse.Namespace, cfg: Config) -> int:
    with _app(cfg, create_db=False) as app:
        if args.action == "list":
            items = app.products()
            if args.json:
                for p in items:
                    print(
                        json.dumps(
                            {
                                "name": p.name,
                                "code": p.code,
                                "views": p.n_views,
                                "created": p.created,
                            }
                        )
                    )
            else:
                width = max([len(p.name) for p in items] + [7])
                print(f"{'product':<{width}}  views  code  created")
                for p in items:
                    print(f"{p.name:<{width}}  {p.n_views:>5}  {p.code or '-'}  {p.created}")
                print(f"{len(items)} products", file=sys.stderr)
        elif args.action == "rename":
            stored = app.rename(args.old, args.new).name
            print(f"renamed {args.old!r} to {stored!r}", file=sys.stderr)
        elif args.action == "delete":
            app.delete_product(args.name)
            print(f"deleted {args.name!r}", file=sys.stderr)
        elif args.action == "check":
            return _check_products(app, as_json=args.json, from_flag=args.threshold is not None)
    return EXIT_OK


def _check_products(app: Any, *, as_json: bool, from_flag: bool) -> int:
    # Read only: views this model has not embedded yet are embedded in memory, never stored.
    report = app.check()
    threshold, source, checks = report.threshold, report.threshold_source, report.checks
    if as_json:
        for c in checks:
            print(json.dumps({**c.__dict__, "flags": c.flags(threshold)}))
        return EXIT_OK
    if not checks:
        print("no products stored", file=sys.stderr)
        return EXIT_OK

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    width = max([len(c.name) for c in checks] + [7])
    print(f"{'product':<{width}}  views  own    nearest product (score)")
    for c in checks:
        near = "-" if c.nearest is None else f"{c.nearest} ({fmt(c.nearest_score)})"
        print(f"{c.name:<{width}}  {c.views:>5}  {fmt(c.own_score):<5}  {near}")
        for flag in c.flags(threshold):
            print(f"{'':<{width}}  ! {flag}")
    worst = report.reject_all
    own = [c.own_score for c in checks if c.own_score is not None]
    source = "--threshold" if from_flag else source
    print(f"threshold {threshold:.3f} (from {source})", file=sys.stderr)
    if worst is not None:
        print(
            f"left out of the set, a product would score up to {worst:.3f} against the others "
            "(a threshold above that rejects such look-alikes)",
            file=sys.stderr,
        )
    if own:
        print(
            f"the stored views of a product match each other at {min(own):.3f} or more (new "
            "photos of it usually score lower)",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_gallery(args: argparse.Namespace, cfg: Config) -> int:
    from .transfer import read_gallery_export

    # An import file is checked whole first: a bad one must not create a database at --db.
    export = read_gallery_export(args.file) if args.action == "import" else None
    if export is not None:
        with _kept_only_if_used(cfg.gallery.path), _app(cfg) as app:
            # The model before the database: a bad --model must not leave an empty database.
            app.embedder  # noqa: B018
            res = app.import_gallery(export, replace=args.replace)
        names = lambda items: ", ".join(items) or "none"  # noqa: E731
        print(
            f"imported {len(res.added)} products ({res.reembedded} views re-embedded for this "
            f"model); replaced: {names(res.replaced)}; skipped (already present, see "
            f"--replace): {names(res.skipped)}",
            file=sys.stderr,
        )
        return EXIT_OK
    with _app(cfg, create_db=False) as app:
        if args.action == "export":
            n = app.export_gallery(args.file, overwrite=args.overwrite)
            print(f"exported {n} products to {args.file}", file=sys.stderr)
        elif args.action == "events":
            for event in app.events(limit=args.limit):
                print(event.to_json())
    return EXIT_OK


def cmd_web(args: argparse.Namespace, cfg: Config) -> int:
    import getpass

    from .web.password import password_path, write_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New web page password: ")
        if getpass.getpass("Again: ") != password:
            raise ValueError("the two passwords differ: nothing was changed")
    path = password_path(cfg)
    try:
        write_password(path, password)
    except OSError as exc:
        raise ValueError(
            f"cannot write {path}: {exc.strerror or exc} (run it as the service's user, e.g. "
            "`sudo prodrec web set-password`)"
        ) from exc
    print(
        f"web password stored in {path}; restart the service to use it "
        "(sudo systemctl restart prodrec)",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_outputs(args: argparse.Namespace, cfg: Config) -> int:
    from .outputs import run_output_test

    # The test event goes straight to each output: a test never enters the outbox or the
    # events table. Exit 1 when an output did not take it.
    ok = run_output_test(cfg, sys.stdout, connect_timeout_s=args.timeout)
    return EXIT_OK if ok else EXIT_ABORTED


COMMANDS = {
    "run": cmd_run,
    "enroll": cmd_enroll,
    "products": cmd_products,
    "gallery": cmd_gallery,
    "web": cmd_web,
    "outputs": cmd_outputs,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.validate_config:
        print(f"OK: {args.config or 'built-in defaults'}")
        return EXIT_OK
    _setup_logging(cfg.service.log_level)
    try:
        return COMMANDS[args.command](args, cfg)
    except ModelError as exc:  # BundleError, RuntimeMissingError
        logger.error("model: %s", exc)
        return EXIT_MODEL
    except GalleryError as exc:
        logger.error("product database: %s", exc)
        return EXIT_GALLERY
    except CameraError as exc:
        logger.error("camera: %s", exc)
        return EXIT_CAMERA
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return EXIT_INTERRUPTED
