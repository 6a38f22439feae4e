"""The device's configuration: frozen dataclasses read from a TOML file.

Every section and key has a default (see `device/default_config.toml`, which documents them), so a
config file only needs what differs. Unknown sections or keys are rejected with their name (a typo
must not silently fall back to a default) and every value is range-checked with what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib  # type: ignore[no-redef]


DEFAULT_CONFIG_FILE = Path(__file__).with_name("default_config.toml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DETECTORS = ("diff", "mog2")
# (section, key) of keys whose default is None ("not set") and whose value, when given, is a
# number. Named by section: a key of the same name elsewhere keeps its own type ([detector]
# threshold is an integer grey level).
OPTIONAL_NUMBERS: frozenset[tuple[str, str]] = frozenset({("matcher", "threshold")})


class ConfigError(ValueError):
    """The configuration file is unreadable or holds an unknown key or an out-of-range value."""


@dataclass(frozen=True)
class CameraConfig:
    # "picamera2", a USB camera index ("0"), a video file, an rtsp:// or http:// URL, a folder of
    # images, or "synthetic:PHOTOS_DIR" (a generated scene, for demos and tests).
    source: str = "picamera2"
    width: int = 640
    height: int = 480
    fps: float = 15.0
    # Region of interest as fractions of the frame: [x0, y0, x1, y1]; objects are looked for inside.
    roi: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class DetectorConfig:
    method: str = "diff"  # "diff" (learnt background, absdiff) or "mog2" (OpenCV's MOG2)
    work_width: int = 128  # detection runs on a copy of the frame downscaled to this width
    color: bool = True  # compare colours (largest channel difference); false = grayscale (cheaper)
    learn_frames: int = 15  # frames averaged (median) into the empty background at start
    adapt_rate: float = 0.02  # running-average weight while the scene is empty
    blur: int = 5  # box blur kernel (odd, pixels of the downscaled frame); 1 = none
    threshold: int = 28  # grey-level difference (0..255) that counts as changed
    morph: int = 3  # morphology open/close kernel (pixels of the downscaled frame)
    min_area: float = 0.01  # smallest object as a fraction of the region of interest
    pad: float = (
        0.03  # square crop padding, fraction of the longer side (small: see default_config)
    )
    lighting_compensation: bool = True  # divide out a global brightness change before differencing


@dataclass(frozen=True)
class PlacementConfig:
    stable_frames: int = 5  # consecutive frames with a steady box before recognising
    stable_iou: float = 0.85  # box overlap between consecutive frames that counts as steady
    empty_frames: int = 5  # consecutive empty frames before the scene counts as empty again
    # A scene not empty for this many frames (an object left there, or one that was there when the
    # background was learnt and is now gone) is taken as the new empty background; 0 = never.
    relearn_after_frames: int = 9000


@dataclass(frozen=True)
class MatcherConfig:
    threshold: float | None = None  # cosine similarity; None = the bundle's calibrated threshold
    ambiguity_margin: float = 0.02  # best two products closer than this -> "ambiguous"


@dataclass(frozen=True)
class ModelConfig:
    path: str = "/var/lib/prodrec/model"  # bundle directory (model.tflite + model.json)
    num_threads: int = 2


@dataclass(frozen=True)
class GalleryConfig:
    path: str = "/var/lib/prodrec/gallery.db"
    reload_every_s: float = 2.0  # how often `run` checks for products added by another process
    crop_size: int = 320  # stored view crops are shrunk to at most this many pixels per side
    # Events table retention, applied when `run` starts and every few minutes: the newest
    # max_events rows kept (0 = no limit), rows older than max_age_days deleted (0 = no limit).
    max_events: int = 100_000
    max_age_days: float = 0.0


@dataclass(frozen=True)
class EnrollConfig:
    views: int = 4
    duplicate_cosine: float = 0.98  # a view this similar to one already taken is refused
    timeout_s: float = 60.0  # give up waiting for a stable placement after this long
    # A photo whose header declares more pixels is refused before decoding (memory bound).
    max_image_pixels: int = 40_000_000


@dataclass(frozen=True)
class ServiceConfig:
    save_crops: str = ""  # folder for event crops; "" = do not save
    save_crops_keep: int = 5000  # the newest crops kept there (older ones deleted); 0 = all
    log_level: str = "INFO"
    retry_initial_s: float = 0.5  # camera retry back-off: first wait ...
    retry_max_s: float = 30.0  # ... doubling up to this


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True  # serve the web page and the JSON API inside `run`
    # 127.0.0.1: this machine only. Any other address (e.g. "0.0.0.0") needs a password
    # (`python -m device web set-password`); `run` refuses to start without one.
    host: str = "127.0.0.1"
    port: int = 8080
    live_fps: float = 2.0  # live image refreshes per second while someone watches
    live_width: int = 640  # the live image is shrunk to at most this width
    jpeg_quality: int = 70  # of the live image
    password_file: str = ""  # salted password hash; "" = web-password beside the product database
    session_hours: float = 12.0  # a login lasts this long
    login_attempts: int = 5  # failed logins per client address per minute before refusing
    max_upload_bytes: int = 15_000_000  # one uploaded photo
    max_upload_pixels: int = 50_000_000  # one uploaded photo, width x height
    max_upload_files: int = 20  # photos in one upload
    max_import_bytes: int = 200_000_000  # a gallery export file uploaded for import


@dataclass(frozen=True)
class OutboxConfig:
    # Delivery of events to MQTT and webhooks (device/outbox.py): a failing receiver is retried
    # after retry_initial_s, doubling up to retry_max_s; an event still undelivered after
    # max_age_s is given up (counted and logged).
    max_age_s: float = 86400.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0


@dataclass(frozen=True)
class MqttConfig:
    host: str = ""  # broker host name or address; "" = no MQTT
    port: int = 1883
    tls: bool = False
    ca_file: str = ""  # CA certificate file for TLS; "" = the system's CAs
    username: str = ""
    password: str = ""
    client_id: str = ""  # "" = prodrec-<hostname>
    topic_prefix: str = ""  # "" = prodrec/<hostname>
    keepalive_s: int = 30
    timeout_s: float = 10.0  # wait this long for the broker's PUBACK before retrying
    snapshot: bool = False  # also publish each event's crop (JPEG) on <prefix>/snapshot
    discovery: bool = True  # publish Home Assistant MQTT discovery configs
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class WebhookConfig:
    url: str = ""  # http:// or https:// URL the event JSON is POSTed to
    secret: str = ""  # "" = unsigned; else X-Prodrec-Signature: sha256=HMAC-SHA256(secret, body)
    timeout_s: float = 10.0
    name: str = ""  # "" = "webhook <url>"; names the output in the status and the outbox


@dataclass(frozen=True)
class GpioConfig:
    # gpiozero pin names ("GPIO17", "BCM17", "BOARD11", or a BCM number "17"); "" = not used.
    known_pin: str = ""
    unknown_pin: str = ""  # pulsed on unknown and ambiguous events
    known_ms: int = 200
    unknown_ms: int = 600
    active_high: bool = True


@dataclass(frozen=True)
class Config:
    camera: CameraConfig = field(default_factory=CameraConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    enroll: EnrollConfig = field(default_factory=EnrollConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    web: WebConfig = field(default_factory=WebConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    webhook: tuple[WebhookConfig, ...] = ()  # [[webhook]] tables, one per receiver

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some keys of one section changed (command-line overrides), re-validated."""
        new = dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **changes)}
        )
        validate(new)
        return new


# [[name]] arrays of tables: each table one item of the tuple.
TABLE_ARRAYS: dict[str, type] = {"webhook": WebhookConfig}
SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Config)
    if f.name not in TABLE_ARRAYS
}


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML config file (None: the built-in defaults). Raises ConfigError saying what is wrong."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return config_from_dict(data, where=str(path))


def config_from_dict(data: dict[str, Any], where: str = "config") -> Config:
    unknown = set(data) - set(SECTIONS) - set(TABLE_ARRAYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {sorted(unknown)}; allowed: "
            f"{sorted(set(SECTIONS) | set(TABLE_ARRAYS))}"
        )
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        sections[name] = _section(cls, raw, name, f"{where} [{name}]")
    for name, cls in TABLE_ARRAYS.items():
        raw = data.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            raise ConfigError(f"{where}: {name} must be written as [[{name}]] tables")
        sections[name] = tuple(
            _section(cls, t, name, f"{where} [[{name}]] #{i + 1}") for i, t in enumerate(raw)
        )
    cfg = Config(**sections)
    validate(cfg, where)
    return cfg


def _section(cls: type, raw: dict[str, Any], section: str, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if (section, key) in OPTIONAL_NUMBERS:
            values[key] = _optional_number(value, key, where)
        else:
            values[key] = _coerce(value, getattr(defaults, key), key, where)
    return cls(**values)


def _optional_number(value: Any, key: str, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigError(
        f"{where}: {key} must be a number (omit it to use the bundle's), got {value!r}"
    )


def _coerce(value: Any, default: Any, key: str, where: str) -> Any:
    """Type-check a TOML value against the default's type (ints are accepted for floats)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(
                f"{where}: {key} must be an integer (a whole number, no decimal point), "
                f"got {value!r}"
            )
        return value
    if isinstance(default, float):
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if (
            not isinstance(value, list)
            or len(value) != len(default)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(
                f"{where}: {key} must be a list of {len(default)} numbers, got {value!r}"
            )
        return tuple(float(v) for v in value)
    raise ConfigError(f"{where}: {key}: unsupported value {value!r}")  # pragma: no cover


def _check(ok: bool, where: str, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: {key} = {value!r} is out of range; allowed: {allowed}")


def validate(cfg: Config, where: str = "config") -> None:
    """Range checks; raises ConfigError naming the key and what is allowed."""
    c, d, p, m = cfg.camera, cfg.detector, cfg.placement, cfg.matcher
    w = f"{where} [camera]"
    _check(bool(c.source.strip()), w, "source", "a non-empty source", c.source)
    _check(16 <= c.width <= 8192, w, "width", "16..8192", c.width)
    _check(16 <= c.height <= 8192, w, "height", "16..8192", c.height)
    _check(0 < c.fps <= 240, w, "fps", "0 < fps <= 240", c.fps)
    x0, y0, x1, y1 = c.roi
    _check(
        0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1,
        w,
        "roi",
        "[x0, y0, x1, y1] fractions with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1",
        list(c.roi),
    )
    w = f"{where} [detector]"
    _check(d.method in DETECTORS, w, "method", f"one of {list(DETECTORS)}", d.method)
    _check(32 <= d.work_width <= 1280, w, "work_width", "32..1280", d.work_width)
    _check(1 <= d.learn_frames <= 1000, w, "learn_frames", "1..1000", d.learn_frames)
    _check(0 <= d.adapt_rate <= 1, w, "adapt_rate", "0..1", d.adapt_rate)
    _check(1 <= d.blur <= 31 and d.blur % 2 == 1, w, "blur", "an odd number 1..31", d.blur)
    _check(1 <= d.threshold <= 254, w, "threshold", "1..254", d.threshold)
    _check(1 <= d.morph <= 31, w, "morph", "1..31", d.morph)
    _check(0 < d.min_area < 1, w, "min_area", "0 < min_area < 1 (fraction of the ROI)", d.min_area)
    _check(0 <= d.pad <= 1, w, "pad", "0..1", d.pad)
    w = f"{where} [placement]"
    _check(1 <= p.stable_frames <= 1000, w, "stable_frames", "1..1000", p.stable_frames)
    _check(0 < p.stable_iou <= 1, w, "stable_iou", "0 < stable_iou <= 1", p.stable_iou)
    _check(1 <= p.empty_frames <= 1000, w, "empty_frames", "1..1000", p.empty_frames)
    _check(
        p.relearn_after_frames == 0 or p.relearn_after_frames > p.stable_frames,
        w,
        "relearn_after_frames",
        "0 (never) or more than stable_frames",
        p.relearn_after_frames,
    )
    w = f"{where} [matcher]"
    if m.threshold is not None:
        _check(-1 <= m.threshold <= 1, w, "threshold", "a cosine similarity in -1..1", m.threshold)
    _check(0 <= m.ambiguity_margin <= 2, w, "ambiguity_margin", "0..2", m.ambiguity_margin)
    w = f"{where} [model]"
    _check(bool(cfg.model.path.strip()), w, "path", "a bundle directory", cfg.model.path)
    _check(1 <= cfg.model.num_threads <= 64, w, "num_threads", "1..64", cfg.model.num_threads)
    w = f"{where} [gallery]"
    g = cfg.gallery
    _check(bool(g.path.strip()), w, "path", "a database file path", g.path)
    _check(0 < g.reload_every_s <= 3600, w, "reload_every_s", "0 < s <= 3600", g.reload_every_s)
    _check(32 <= g.crop_size <= 2048, w, "crop_size", "32..2048", g.crop_size)
    _check(g.max_events >= 0, w, "max_events", ">= 0 (0 = no limit)", g.max_events)
    _check(g.max_age_days >= 0, w, "max_age_days", ">= 0 (0 = no limit)", g.max_age_days)
    w = f"{where} [enroll]"
    e = cfg.enroll
    _check(1 <= e.views <= 64, w, "views", "1..64", e.views)
    _check(0 < e.duplicate_cosine <= 1, w, "duplicate_cosine", "0 < c <= 1", e.duplicate_cosine)
    _check(0 < e.timeout_s <= 3600, w, "timeout_s", "0 < s <= 3600", e.timeout_s)
    _check(
        10_000 <= e.max_image_pixels <= 1_000_000_000,
        w,
        "max_image_pixels",
        "10000..1000000000",
        e.max_image_pixels,
    )
    w = f"{where} [service]"
    s = cfg.service
    _check(
        s.log_level.upper() in LOG_LEVELS, w, "log_level", f"one of {list(LOG_LEVELS)}", s.log_level
    )
    _check(0 < s.retry_initial_s <= 60, w, "retry_initial_s", "0 < s <= 60", s.retry_initial_s)
    _check(s.save_crops_keep >= 0, w, "save_crops_keep", ">= 0 (0 = keep all)", s.save_crops_keep)
    _check(
        s.retry_initial_s <= s.retry_max_s <= 3600,
        w,
        "retry_max_s",
        "retry_initial_s..3600",
        s.retry_max_s,
    )
    _validate_web(cfg.web, f"{where} [web]")
    validate_outputs(cfg, where)


def _validate_web(web: WebConfig, w: str) -> None:
    _check(bool(web.host.strip()), w, "host", "an address such as 127.0.0.1 or 0.0.0.0", web.host)
    _check(
        1024 <= web.port <= 65535, w, "port", "1024..65535 (the service is unprivileged)", web.port
    )
    _check(0 < web.live_fps <= 30, w, "live_fps", "0 < fps <= 30", web.live_fps)
    _check(64 <= web.live_width <= 4096, w, "live_width", "64..4096", web.live_width)
    _check(10 <= web.jpeg_quality <= 100, w, "jpeg_quality", "10..100", web.jpeg_quality)
    _check(0 < web.session_hours <= 24 * 30, w, "session_hours", "0 < h <= 720", web.session_hours)
    _check(1 <= web.login_attempts <= 100, w, "login_attempts", "1..100", web.login_attempts)
    _check(
        1000 <= web.max_upload_bytes <= 100_000_000,
        w,
        "max_upload_bytes",
        "1000..100000000",
        web.max_upload_bytes,
    )
    _check(
        10_000 <= web.max_upload_pixels <= 200_000_000,
        w,
        "max_upload_pixels",
        "10000..200000000",
        web.max_upload_pixels,
    )
    _check(1 <= web.max_upload_files <= 100, w, "max_upload_files", "1..100", web.max_upload_files)
    _check(
        1000 <= web.max_import_bytes <= 2_000_000_000,
        w,
        "max_import_bytes",
        "1000..2000000000",
        web.max_import_bytes,
    )


def validate_outputs(cfg: Config, where: str = "config") -> None:
    """Range checks of [outbox], [mqtt], [[webhook]] and [gpio] (see device/outputs/)."""
    o = cfg.outbox
    w = f"{where} [outbox]"
    _check(1 <= o.max_age_s <= 365 * 86400, w, "max_age_s", "1..31536000", o.max_age_s)
    _check(0 < o.retry_initial_s <= 60, w, "retry_initial_s", "0 < s <= 60", o.retry_initial_s)
    _check(
        o.retry_initial_s <= o.retry_max_s <= 86400,
        w,
        "retry_max_s",
        "retry_initial_s..86400",
        o.retry_max_s,
    )
    q = cfg.mqtt
    w = f"{where} [mqtt]"
    _check(
        q.host == "" or _HOST.match(q.host) is not None,
        w,
        "host",
        'a host name or address without scheme or port (e.g. "broker.local"), or "" for none',
        q.host,
    )
    _check(1 <= q.port <= 65535, w, "port", "1..65535", q.port)
    _check(5 <= q.keepalive_s <= 3600, w, "keepalive_s", "5..3600", q.keepalive_s)
    _check(0 < q.timeout_s <= 600, w, "timeout_s", "0 < s <= 600", q.timeout_s)
    for key in ("topic_prefix", "discovery_prefix"):
        value = getattr(q, key)
        _check(
            (key == "topic_prefix" and value == "") or _TOPIC.match(value) is not None,
            w,
            key,
            "topic levels of letters, digits, '_' '-' '.' joined by '/', without wildcards "
            "(+ #) or a leading or trailing '/'",
            value,
        )
    _check(len(q.client_id) <= 64, w, "client_id", "at most 64 characters", q.client_id)
    names: set[str] = set()
    for i, h in enumerate(cfg.webhook):
        w = f"{where} [[webhook]] #{i + 1}"
        _check(
            _valid_url(h.url),
            w,
            "url",
            "an http:// or https:// URL with a host (e.g. http://till.local:8080/hook)",
            h.url,
        )
        _check(0 < h.timeout_s <= 120, w, "timeout_s", "0 < s <= 120", h.timeout_s)
        name = h.name or f"webhook {h.url}"
        _check(name not in names, w, "name", "a name no other [[webhook]] has", name)
        names.add(name)
    g = cfg.gpio
    w = f"{where} [gpio]"
    for key in ("known_pin", "unknown_pin"):
        pin = getattr(g, key)
        _check(
            pin == "" or gpio_pin_number(pin) is not None,
            w,
            key,
            'a pin as gpiozero names it: "GPIO17", "BCM17", "17" (BCM 0..27) or "BOARD11" '
            '(header pin 1..40), or "" for none',
            pin,
        )
    _check(
        g.known_pin == "" or gpio_pin_number(g.known_pin) != gpio_pin_number(g.unknown_pin),
        w,
        "unknown_pin",
        "another pin than known_pin",
        g.unknown_pin,
    )
    _check(10 <= g.known_ms <= 10000, w, "known_ms", "10..10000", g.known_ms)
    _check(10 <= g.unknown_ms <= 10000, w, "unknown_ms", "10..10000", g.unknown_ms)


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")
_TOPIC = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
# The header pins that are GPIOs (BOARD numbering -> BCM) on every 40-pin Raspberry Pi.
_BOARD_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
    21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}  # fmt: skip


def gpio_pin_number(pin: str) -> int | None:
    """The BCM number of a gpiozero pin name ("GPIO17", "BCM17", "17", "BOARD11", "J8:11");
    None when it names no GPIO of a 40-pin Raspberry Pi header."""
    m = re.fullmatch(r"(GPIO|BCM)?(\d{1,2})|(BOARD|J8:)(\d{1,2})", pin.strip().upper())
    if m is None:
        return None
    if m.group(2) is not None:
        n = int(m.group(2))
        return n if 0 <= n <= 27 else None
    return _BOARD_TO_BCM.get(int(m.group(4)))


def _valid_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError on a port that is not a number or out of range
    except ValueError:
        return False
    del port
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not any(c.isspace() for c in url)
    )
