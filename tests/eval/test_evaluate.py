"""`training evaluate` and `training calibrate` on a tiny model and the committed fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training import metrics
from training.cli import main as training_main
from training.evaluate import evaluate, evaluate_embeddings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "grocery"


def test_calibrate_cli_writes_threshold_into_config(
    eval_run_dir: Path, trees: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = training_main(
        ["calibrate", str(eval_run_dir), "--data", str(trees["data"]), "--target-far", "0.1"]
    )
    assert rc == 0
    thr = json.loads((eval_run_dir / "config.json").read_text())["threshold"]
    assert thr["method"] == "leave-class-out"
    assert thr["target_far"] == 0.1
    assert -1.0 <= thr["value"] <= 1.0
    assert thr["achieved_far"] <= 0.1
    n_classes = len(json.loads((eval_run_dir / "config.json").read_text())["classes"])
    assert thr["n_impostor"] == thr["n_genuine"] == 4 * n_classes  # every val image probes once
    assert "threshold" in capsys.readouterr().out


def test_calibrate_unseen_uses_only_classes_the_run_was_not_trained_on(
    eval_run_dir: Path, tmp_path: Path
) -> None:
    from training.calibrate import calibrate_run, calibration_split

    cfg = json.loads((eval_run_dir / "config.json").read_text())
    trained = cfg["classes"]
    val = tmp_path / "val"
    for c in [*trained[:2], "New-Product-A", "New-Product-B"]:
        src = FIXTURE / "test" / (c if c in trained else trained[0 if c.endswith("A") else 1])
        (val / c).mkdir(parents=True)
        for f in sorted(src.iterdir()):
            (val / c / f.name).symlink_to(f)
    split, source = calibration_split(cfg, tmp_path, unseen=True)
    assert sorted(split) == ["New-Product-A", "New-Product-B"] and "not trained on" in source
    assert [len(v) for v in split.values()] == [4, 4]
    result = calibrate_run(eval_run_dir, tmp_path, unseen=True, write=True, progress=False)
    thr = json.loads((eval_run_dir / "config.json").read_text())["threshold"]
    assert thr["classes"] == "not trained on" and thr["value"] == result["value"]
    assert thr["n_genuine"] == thr["n_impostor"] == 8  # the two unseen classes' images only
    for c in trained[:2]:  # only trained classes left: nothing unseen to calibrate on
        (val / c).rename(tmp_path / c)
    (val / "New-Product-B").rename(tmp_path / "New-Product-B")
    with pytest.raises(ValueError, match="at least 2"):
        calibration_split(cfg, tmp_path, unseen=True)


def test_calibrate_without_val_images_says_what_to_do(eval_run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()  # a val/ with none of the run's classes
    with pytest.raises(ValueError, match="validation images"):
        from training.calibrate import calibrate_run

        calibrate_run(eval_run_dir, tmp_path, write=False, progress=False)


def test_evaluate_trees_with_unknowns_writes_report_and_plots(
    eval_run_dir: Path, trees: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report"
    rc = training_main([
        "evaluate", "--model", str(eval_run_dir), "--enroll", str(trees["enroll_known"]),
        "--query", str(trees["query"]), "--unknown", str(trees["unknown"]), "--shots", "3",
        "--threshold", "0.5", "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert (m["n_products"], m["n_enroll"], m["n_query"], m["n_unknown"]) == (6, 18, 24, 8)
    for name in ("scores_hist.png", "roc.png", "tsne.png", "summary.md"):
        assert (out / name).stat().st_size > 1000, name
    assert report["threshold_source"] == "--threshold"

    # recompute from the saved embeddings by brute force: the report must agree
    z = np.load(out / "embeddings.npz")
    e, el, q, ql, u = (
        z["enroll"],
        list(z["enroll_labels"]),
        z["query"],
        list(z["query_labels"]),
        z["unknown"],
    )
    assert e.shape[0] == 18 and all(list(el).count(c) == 3 for c in set(el))
    # same float32 similarities as the code under test, the per-item argmax / max done by hand
    sim_q, sim_u = metrics.similarity(q, e), metrics.similarity(u, e)
    right, known_best, unknown_best = 0, [], []
    for row, lab in zip(sim_q, ql, strict=True):
        j = max(range(len(el)), key=lambda k: (row[k], -k))
        right += el[j] == lab
        known_best.append(float(row[j]))
    for row in sim_u:
        unknown_best.append(float(max(row)))
    assert m["p_at_1"] == pytest.approx(right / len(ql))
    assert m["auroc_unknown"] == pytest.approx(metrics.auroc(known_best, unknown_best), abs=1e-6)
    at = m["at_threshold"]
    assert at["false_accept_unknown"] == pytest.approx(
        np.mean(np.array(unknown_best) >= 0.5), abs=1e-6
    )
    assert at["accepted_right"] + at["accepted_wrong"] + at["rejected"] == pytest.approx(1.0)
    # With no margin the device's answers are the plain threshold's; the default margin is listed.
    margins = {r["margin"]: r for r in at["margins"]}
    assert 0.02 in margins and margins[0.0]["ambiguous"] == 0.0
    assert margins[0.0]["right"] == pytest.approx(at["accepted_right"])
    assert margins[0.0]["wrong"] == pytest.approx(at["accepted_wrong"])
    assert margins[0.0]["false_accept"] == pytest.approx(at["false_accept_leave_class_out"])
    summary = (out / "summary.md").read_text()
    assert "| margin |" in summary and summary.count("\n| 0.") == len(at["margins"])
    assert set(m["per_product_accuracy"]) == set(ql)
    oracle = m["at_oracle_threshold"]
    assert oracle["false_accept_leave_class_out"] <= 0.01


def test_evaluate_protocol_lists_products_with_fewer_shots(
    eval_run_dir: Path, tmp_path: Path
) -> None:
    classes = sorted(p.name for p in (FIXTURE / "train").iterdir())[:4]
    proto = {
        "name": "fixture-protocol",
        "train_classes": [],
        "heldout_classes": classes,
        "enroll": {
            c: [f"train/{c}/{p.name}" for p in sorted((FIXTURE / "train" / c).iterdir())][:5]
            for c in classes
        },
        "query": {
            c: [f"test/{c}/{p.name}" for p in sorted((FIXTURE / "test" / c).iterdir())]
            for c in classes
        },
    }
    proto["enroll"][classes[0]] = proto["enroll"][classes[0]][:2]  # this one has only 2 shots
    pfile = tmp_path / "protocol.json"
    pfile.write_text(json.dumps(proto))
    with pytest.raises(ValueError, match="--data-root"):  # paths are not relative to tmp_path
        evaluate(eval_run_dir, tmp_path / "r0", protocol=pfile, plots=False, progress=False)
    report = evaluate(
        eval_run_dir,
        tmp_path / "r1",
        protocol=pfile,
        data_root=FIXTURE,
        shots=4,
        plots=False,
        progress=False,
    )
    assert report["data"]["products_with_fewer_shots"] == {classes[0]: 2}
    assert report["data"]["shots_used"] == {classes[0]: 2, **{c: 4 for c in classes[1:]}}
    assert report["metrics"]["n_query"] == 16
    assert (tmp_path / "r1" / "summary.md").read_text().count(classes[0]) >= 1


def test_bad_input_errors(eval_run_dir: Path, trees: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "enroll"
    (empty / "Banana").mkdir(parents=True)
    with pytest.raises(ValueError, match="without images"):
        evaluate(eval_run_dir, tmp_path / "r", enroll=empty, query=trees["query"])
    with pytest.raises(ValueError, match="no enrollment images"):
        evaluate(eval_run_dir, tmp_path / "r", enroll=trees["enroll_known"], query=FIXTURE / "test")
    with pytest.raises(ValueError, match="--shots"):
        evaluate(
            eval_run_dir,
            tmp_path / "r",
            enroll=trees["enroll_known"],
            query=trees["query"],
            shots=0,
        )
    with pytest.raises(ValueError, match="expected a bundle folder"):
        evaluate(tmp_path, tmp_path / "r", enroll=trees["enroll_known"], query=trees["query"])
    with pytest.raises(ValueError, match="embedding size mismatch"):
        evaluate_embeddings(np.ones((2, 32)), ["a", "b"], np.ones((1, 16)), ["a"])
    with pytest.raises(ValueError, match="both enrollment shots and queries"):
        evaluate(eval_run_dir, tmp_path / "r", enroll=FIXTURE / "train", query=FIXTURE / "train")
    (tmp_path / "report.txt").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        evaluate(eval_run_dir, tmp_path / "report.txt", enroll=empty, query=trees["query"])


def test_one_enrolled_product_has_no_leave_class_out_figures() -> None:
    e = np.eye(3, dtype=np.float32)
    result, _ = evaluate_embeddings(e[:1], ["a"], e[:2], ["a", "a"], threshold=0.5)
    assert result["auroc_leave_class_out"] is None  # no other product to be taken for
    assert result["at_threshold"]["false_accept_leave_class_out"] is None


def test_tflite_bundle_runs_through_device_matcher(
    tiny_bundle_dir: Path, trees: dict[str, Path], tmp_path: Path
) -> None:
    report = evaluate(
        tiny_bundle_dir,
        tmp_path / "r",
        enroll=trees["enroll_known"],
        query=trees["query"],
        shots=4,
        plots=False,
        progress=False,
    )
    m = report["metrics"]
    assert report["model"]["kind"] == "tflite"
    assert m["scorer"] == "device.matcher.Matcher"
    assert 0.0 <= m["p_at_1"] <= 1.0 and m["n_query"] == 24


def test_run_whose_config_disagrees_with_extractor_is_rejected(
    eval_run_dir: Path, trees: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "extractor.keras").symlink_to(eval_run_dir / "extractor.keras")
    cfg = json.loads((eval_run_dir / "config.json").read_text())
    cfg["model"]["embedding_dim"] = 7
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="embedding size mismatch"):
        evaluate(bad, tmp_path / "r", enroll=trees["enroll_known"], query=trees["query"])
