"""Finding and decoding training images; every bad input is a clear ValueError or a counted skip."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from training.data import decode_items, parse_classes, scan_dataset

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "grocery"


def _jpg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return path


def _make(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _jpg(root / name / f"{i:03d}.jpg", seed=i)
    return root


def test_folder_per_class_gets_a_stratified_split() -> None:
    ds = scan_dataset(FIXTURE / "train", val_split=0.15, seed=0)
    assert len(ds.classes) == 8 and ds.layout == "folders"
    assert len(ds.train) + len(ds.val) == 64
    for label in range(8):  # every class on both sides
        assert sum(lab == label for _, lab in ds.val) == 1
        assert sum(lab == label for _, lab in ds.train) == 7
    assert not {p for p, _ in ds.train} & {p for p, _ in ds.val}
    again = scan_dataset(FIXTURE / "train", val_split=0.15, seed=0)
    assert again.val == ds.val  # deterministic for a seed


def test_train_val_subtrees_are_used_and_other_trees_ignored(tmp_path: Path) -> None:
    _make(tmp_path / "train", {"a": 3, "b": 3})
    _make(tmp_path / "val", {"a": 1, "b": 2})
    _make(tmp_path / "test", {"a": 5, "zzz": 5})
    (tmp_path / "protocol.json").write_text("{}")
    ds = scan_dataset(tmp_path)
    assert ds.layout == "train/val" and ds.classes == ["a", "b"]
    assert len(ds.train) == 6 and len(ds.val) == 3
    assert all("/test/" not in str(p) for p, _ in ds.train + ds.val)


def test_classes_subset_from_names_text_file_and_protocol_json(tmp_path: Path) -> None:
    root = _make(tmp_path / "data", {"a": 2, "b": 2, "c": 2})
    assert scan_dataset(root, "c,a").classes == ["c", "a"]
    listing = tmp_path / "classes.txt"
    listing.write_text("# products\na\n\nc  \n")
    assert scan_dataset(root, str(listing)).classes == ["a", "c"]
    protocol = tmp_path / "protocol.json"
    protocol.write_text(json.dumps({"train_classes": ["b", "c"], "heldout_classes": ["a"]}))
    assert scan_dataset(root, str(protocol)).classes == ["b", "c"]
    assert parse_classes(["x", "y"]) == ("x", "y")


def test_unknown_class_in_classes_is_named(tmp_path: Path) -> None:
    root = _make(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=r"unknown class.*nope"):
        scan_dataset(root, "a,nope")


def test_classes_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        parse_classes(str(tmp_path / "missing.txt"))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is empty"):
        scan_dataset(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        scan_dataset(tmp_path / "nothing")


def test_single_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only one class"):
        scan_dataset(_make(tmp_path, {"a": 5}))
    with pytest.raises(ValueError, match="only one class"):
        scan_dataset(_make(tmp_path / "two", {"a": 5, "b": 5}), "a")


def test_class_with_fewer_than_two_images(tmp_path: Path) -> None:
    root = _make(tmp_path, {"a": 3, "b": 1, "c": 0})
    with pytest.raises(ValueError, match=r"fewer than 2 usable images.*b \(1\).*c \(0\)"):
        scan_dataset(root)


def test_non_image_files_are_skipped_and_listed(tmp_path: Path) -> None:
    root = _make(tmp_path, {"a": 2, "b": 2})
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / ".DS_Store").write_bytes(b"\0")  # hidden files are not data
    ds = scan_dataset(root)
    assert [p.name for p, _ in ds.skipped] == ["notes.txt"]
    assert "not an image" in ds.skipped_strings()[0]


def test_odd_image_formats_are_converted_and_broken_files_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, size=(30, 20, 3), dtype=np.uint8)
    files = {
        "gray.png": Image.fromarray(rgb[..., 0], "L"),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
        "palette.png": Image.fromarray(rgb, "RGB").convert("P"),
        "rgb.jpg": Image.fromarray(rgb, "RGB"),
    }
    items = []
    for name, im in files.items():
        im.save(tmp_path / name)
        items.append((tmp_path / name, 0))
    cv2.imwrite(str(tmp_path / "deep.png"), (rgb.astype(np.uint16) * 257))  # 16-bit
    items.append((tmp_path / "deep.png", 1))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    items += [(tmp_path / "broken.jpg", 1), (tmp_path / "empty.png", 1)]
    arrays, skipped = decode_items(items, 24, progress=False)
    assert arrays.images.shape == (5, 24, 24, 3) and arrays.images.dtype == np.uint8
    assert arrays.labels.tolist() == [0, 0, 0, 0, 1]
    assert sorted(p.name for p, _ in skipped) == ["broken.jpg", "empty.png"]
    # colour order: a pure red file decodes to red in RGB
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    arr, _ = decode_items([(tmp_path / "red.png", 0)], 8, progress=False)
    assert arr.images[0, 4, 4].tolist() == [255, 0, 0]


def test_fit_rejects_classes_left_with_one_readable_image_before_building(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from training.config import FitConfig
    from training.fit import fit

    root = _make(tmp_path / "data", {"a": 3, "b": 2})
    (root / "b" / "001.jpg").write_bytes(b"garbage")
    cfg = FitConfig(weights=None, alpha=0.35, input_size=96, epochs=1)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match=r"b \(1\)"):
        fit(root, tmp_path / "run", cfg, progress=False)
    assert "001.jpg" in caplog.text  # the skip warning names the file
    assert not (tmp_path / "run" / "extractor.keras").exists()


def test_fit_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    from training.config import FitConfig
    from training.fit import fit

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="--overwrite"):
        fit(
            FIXTURE / "train",
            run,
            FitConfig(weights=None, alpha=0.35, input_size=96),
            progress=False,
        )


def test_cli_reports_bad_input_as_an_error_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from training.cli import main

    shutil.copytree(FIXTURE / "train" / "Banana", tmp_path / "data" / "Banana")
    code = main(
        ["fit", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--weights", "none"]
    )
    assert code == 2
    assert "only one class" in capsys.readouterr().err
    code = main(["fit", str(FIXTURE / "train"), "--out", str(tmp_path / "r"), "--alpha", "0.6"])
    assert code == 2
    assert "alpha 0.6 has no ImageNet weights" in capsys.readouterr().err


def test_a_random_backbone_is_unfrozen_whole_unless_told_otherwise() -> None:
    from training.cli import build_parser, config_from_args

    def unfreeze(*extra: str) -> tuple[float, ...]:
        args = build_parser().parse_args(["fit", "data", "--out", "run", *extra])
        return config_from_args(args).unfreeze

    assert unfreeze() == (0.25, 0.5)  # ImageNet start: only the top is fine-tuned
    assert unfreeze("--weights", "none") == (1.0,)
    assert unfreeze("--weights", "none", "--unfreeze", "0.5") == (0.5,)
    assert unfreeze("--unfreeze", "none") == ()


def test_fit_writes_its_run_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.fit as fit_module
    from training.config import FitConfig

    cfg = FitConfig(weights=None, alpha=0.35, input_size=96)
    old = tmp_path / "run"
    old.mkdir()
    (old / "config.json").write_text("{}")  # an existing run, to be replaced with --overwrite

    def interrupted(data_dir, staging, *args):  # the training, stopped part way
        (staging / "extractor.keras").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_module.fit(FIXTURE / "train", old, cfg, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left
    assert sorted(p.name for p in old.iterdir()) == ["config.json"]  # the old run untouched
    # A run folder that also holds other things (a bundle converted into it) is not replaced.
    (old / "bundle").mkdir()
    with pytest.raises(ValueError, match=r"holds more than a training run \(bundle\)"):
        fit_module.fit(FIXTURE / "train", old, cfg, overwrite=True)
    (old / "bundle").rmdir()

    def finished(data_dir, staging, *args):  # a complete run that cannot be put in place
        (staging / "config.json").write_text("{}")
        return fit_module.FitResult(staging, {}, [], None, None, "val_loss", None)

    monkeypatch.setattr(fit_module, "_fit", finished)
    monkeypatch.setattr(fit_module, "replace_dir", lambda *a: (_ for _ in ()).throw(OSError()))
    with pytest.raises(OSError):
        fit_module.fit(FIXTURE / "train", old, cfg, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # still no staging left
    # --overwrite replaces runs only; and never inside the data folder.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds files but no training run"):
        fit_module.fit(FIXTURE / "train", notes, cfg, overwrite=True)
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "train", data)
    with pytest.raises(ValueError, match="inside the data folder"):
        fit_module.fit(data, data / "run1", cfg)


def test_augmentation_colour_gains_erasing_and_dark_do_what_they_say() -> None:
    import tensorflow as tf

    from training.config import AugmentParams
    from training.data import augment_batch

    tf.random.set_seed(0)
    grey = np.full((64, 40, 40, 3), 100, np.uint8)
    still = dict(zoom=(1.0, 1.0), aspect=1.0, rotation_deg=0.0, brightness=0.0, contrast=(1, 1))
    plain = augment_batch(grey, 32, AugmentParams(**still)).numpy()
    assert np.allclose(plain, 100.0, atol=1e-3)  # everything off: the image unchanged

    tinted = augment_batch(grey, 32, AugmentParams(**still, colour=0.2)).numpy()
    gains = tinted[:, 0, 0, :] / 100.0  # one gain per image and channel, uniform over the image
    assert np.allclose(tinted, tinted[:, :1, :1, :], atol=1e-3)
    assert gains.min() >= 0.8 - 1e-4 and gains.max() <= 1.2 + 1e-4
    assert gains.std() > 0.05 and np.abs(gains[:, 0] - gains[:, 1]).max() > 0.05

    erased = augment_batch(grey, 32, AugmentParams(**still, erase=1.0)).numpy()
    changed = np.any(np.abs(erased - 100.0) > 1e-3, axis=-1)  # (N, 32, 32)
    share = changed.mean(axis=(1, 2))
    # Every image gets one rectangle of 2-25 % of the area (a fill close to 100 may hide it).
    assert (share > 0).mean() > 0.9 and share.max() <= 0.25 + 2 * 32 / 32**2
    assert share[share > 0].min() >= 0.02 - 2 * 32 / 32**2  # 2-25 %, give or take a pixel row
    for mask in changed[share > 0]:
        rows, cols = np.where(mask)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()  # a rectangle, not scattered pixels
    never = augment_batch(grey, 32, AugmentParams(**still, erase=0.0)).numpy()
    assert np.allclose(never, 100.0, atol=1e-3)
    half = augment_batch(grey, 32, AugmentParams(**still, erase=0.5)).numpy()
    erased_share = np.any(np.abs(half - 100.0) > 1e-3, axis=(1, 2, 3)).mean()
    assert 0.25 <= erased_share <= 0.75  # about half of 64 images (binomial sd 0.06)

    many = np.full((2048, 8, 8, 3), 200, np.uint8)
    dark = augment_batch(many, 8, AugmentParams(**still, dark=1.0)).numpy()
    gain = dark[:, 0, 0, 0] / 200.0  # one gain per image, the same on every pixel and channel
    assert np.allclose(dark, dark[:, :1, :1, :1], atol=1e-3)
    assert gain.min() >= 0.2 - 1e-4 and gain.max() <= 0.7 + 1e-4
    # log-uniform on [0.2, 0.7]: mean log gain (log 0.2 + log 0.7) / 2 = -0.983, sd 0.36 / sqrt
    # 2048 = 0.008; a uniform draw on [0.2, 0.7] would give -0.853.
    assert abs(np.log(gain).mean() - (np.log(0.2) + np.log(0.7)) / 2) < 0.04
    # Clipped before darkening: a highlight pushed past white ends at most 0.7 * 255.
    hot = augment_batch(
        many, 8, AugmentParams(**{**still, "brightness": 0.0}, colour=0.5, dark=1.0)
    )
    assert hot.numpy().max() <= 0.7 * 255 + 1e-3
    some = augment_batch(grey, 32, AugmentParams(**still, dark=0.5)).numpy()
    darkened = (np.abs(some - 100.0) > 1e-3).any(axis=(1, 2, 3)).mean()
    assert 0.25 <= darkened <= 0.75


def _naive_bilinear(img: np.ndarray, out: int) -> np.ndarray:
    """(h, w, c) -> (out, out, c): half-pixel centres, edges clamped (tf.image.resize bilinear)."""
    h = img.shape[0]
    src = np.clip((np.arange(out) + 0.5) * h / out - 0.5, 0, h - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, h - 1)
    f = (src - i0)[:, None]
    rows = img[i0] * (1 - f)[:, :, None] + img[i1] * f[:, :, None]  # along y
    return rows[:, i0] * (1 - f.T)[:, :, None] + rows[:, i1] * f.T[:, :, None]  # along x


def test_augmentation_low_resolution_against_a_naive_shrink_and_enlarge() -> None:
    import tensorflow as tf

    from training.config import AugmentParams
    from training.data import augment_batch

    tf.random.set_seed(1)
    still = dict(zoom=(1.0, 1.0), aspect=1.0, rotation_deg=0.0, brightness=0.0, contrast=(1, 1))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    got = augment_batch(img, 32, AugmentParams(**still, lowres=1.0, lowres_scale=(0.25, 0.25)))
    for i in range(4):
        small = img[i].astype(np.float64).reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))  # area: 4x4
        np.testing.assert_allclose(got.numpy()[i], _naive_bilinear(small, 32), atol=1e-3)
    assert got.numpy().std() < 0.5 * img.std()  # the noise is mostly averaged away
    # The smallest side is 2 px, however small the scale.
    tiny = augment_batch(img, 32, AugmentParams(**still, lowres=1.0, lowres_scale=(0.01, 0.01)))
    small = img[0].astype(np.float64).reshape(2, 16, 2, 16, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(tiny.numpy()[0], _naive_bilinear(small, 32), atol=1e-3)
    # The default scale, 0.2-0.7 of 32 px (sides 6-22): blurred, never left sharp.
    for _ in range(8):
        blur = augment_batch(img, 32, AugmentParams(**still, lowres=1.0)).numpy()
        assert 0.1 * img.std() < blur.std() < 0.8 * img.std()
    off = augment_batch(img, 32, AugmentParams(**still, lowres=0.0)).numpy()
    np.testing.assert_allclose(off, img, atol=1e-3)
    many = rng.integers(0, 256, size=(64, 16, 16, 3)).astype(np.uint8)
    half = augment_batch(many, 16, AugmentParams(**still, lowres=0.5)).numpy()
    changed = (np.abs(half - many) > 1e-3).any(axis=(1, 2, 3)).mean()
    assert 0.25 <= changed <= 0.75  # about half of 64 images (binomial sd 0.06)


def test_augmentation_settings_are_checked() -> None:
    from training.config import FitConfig

    for bad in (
        dict(aug_zoom=0.05),
        dict(aug_colour=1.0),
        dict(aug_erase=1.5),
        dict(aug_dark=-0.1),
        dict(aug_lowres=1.1),
    ):
        with pytest.raises(ValueError, match="--aug-"):
            FitConfig(**bad)
    cfg = FitConfig(
        aug_zoom=0.5, aug_colour=0.1, aug_erase=0.3, aug_dark=0.4, aug_lowres=0.2, flip=True
    )
    p = cfg.augment_params()
    assert p.zoom == (0.5, 1.0) and p.colour == 0.1 and p.erase == 0.3 and p.flip
    assert p.dark == 0.4 and p.lowres == 0.2
