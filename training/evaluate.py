"""Few-shot, open-set evaluation of an extractor (Keras) or a model bundle (TFLite, as the device).

    python -m training evaluate --model PATH --enroll DIR --query DIR [--unknown DIR] [--shots N]
        --out REPORT_DIR [--threshold T]
    python -m training evaluate --model PATH --protocol protocol.json [--data-root DIR] --out DIR

--model: a RUN_DIR or extractor.keras (Keras, float) or a bundle folder (TFLite through the device's
`Embedder` and `Matcher`). --enroll/--query/--unknown: folder-per-product trees. Writes report.json,
summary.md, embeddings.npz and PNG plots into REPORT_DIR.

Metrics (see training/metrics.py): P@1 (product of the best-matching enrollment shot), per-product
accuracy, most confused pairs, MAP@R, open-set AUROC with leave-class-out unknowns (each query
scored against the gallery without its own product) and, with --unknown, with real unknown
products; at the threshold (the model's own unless --threshold): accepted-and-right rate of known
queries and false-accept rate of unknown ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device.vectors import centre

from . import metrics
from .embed import ImageEmbedder, embed_split, open_model
from .protocol import Split, cap_shots, read_protocol, scan_tree

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.md"
ORACLE_FAR = 0.01
# Ambiguity margins reported at the threshold (the device's default, [matcher] ambiguity_margin, is
# among them).
MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1)


def device_product_scores(
    gallery: np.ndarray, gallery_labels: Sequence[str], queries: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Best score per product exactly as the device's matcher computes it."""
    from device.matcher import Matcher

    matcher = Matcher(gallery, list(gallery_labels), threshold=0.0)
    products, scores = matcher.product_scores(queries)
    return list(products), np.asarray(scores, dtype=np.float32)


def numpy_product_scores(
    gallery: np.ndarray, gallery_labels: Sequence[str], queries: np.ndarray
) -> tuple[list[str], np.ndarray]:
    return metrics.product_scores(metrics.similarity(queries, gallery), gallery_labels)


def evaluate_embeddings(
    enroll_emb: np.ndarray,
    enroll_labels: Sequence[str],
    query_emb: np.ndarray,
    query_labels: Sequence[str],
    *,
    unknown_emb: np.ndarray | None = None,
    threshold: float | None = None,
    use_device_matcher: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """All metrics from embeddings -> (JSON-able metrics, score arrays for plots)."""
    if enroll_emb.ndim != 2 or query_emb.ndim != 2:
        raise ValueError("embeddings must be 2-D (N, D) arrays")
    if enroll_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(
            f"embedding size mismatch: enrollment embeddings have {enroll_emb.shape[1]} values, "
            f"queries {query_emb.shape[1]}; embed both with the same model"
        )
    if unknown_emb is not None and unknown_emb.size and unknown_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(
            f"embedding size mismatch: unknown-product embeddings have {unknown_emb.shape[1]} "
            f"values, queries {query_emb.shape[1]}"
        )
    score_fn = device_product_scores if use_device_matcher else numpy_product_scores
    products, scores = score_fn(enroll_emb, enroll_labels, query_emb)
    predicted, best = metrics.predict(products, scores)
    best_all, genuine, impostor = metrics.leave_class_out(products, scores, query_labels)
    # With one product there is no other to be taken for: no leave-class-out unknowns.
    has_lco = bool(np.isfinite(impostor).any())
    sim = metrics.similarity(query_emb, enroll_emb)
    result: dict[str, Any] = {
        "n_products": len(products),
        "n_enroll": len(enroll_labels),
        "n_query": len(query_labels),
        "p_at_1": metrics.precision_at_1(predicted, list(query_labels)),
        "map_at_r": metrics.map_at_r(sim, enroll_labels, query_labels),
        "auroc_leave_class_out": metrics.auroc(best_all, impostor) if has_lco else None,
        "per_product_accuracy": metrics.per_product_accuracy(predicted, list(query_labels)),
        "confused_pairs": [
            {"true": t, "predicted": p, "count": n}
            for t, p, n in metrics.confusion_pairs(predicted, list(query_labels))
        ],
        "scores": {
            "genuine_mean": float(np.mean(genuine)),
            "impostor_leave_class_out_mean": float(np.mean(impostor[np.isfinite(impostor)]))
            if has_lco
            else None,
        },
        "scorer": "device.matcher.Matcher" if use_device_matcher else "training.metrics",
    }
    arrays: dict[str, np.ndarray] = {
        "best": best_all,
        "genuine": genuine,
        "impostor": impostor,
    }
    unknown_best = None
    if unknown_emb is not None and unknown_emb.size:
        _, u_scores = score_fn(enroll_emb, enroll_labels, unknown_emb)
        unknown_best = u_scores.max(axis=1)
        arrays["unknown"] = unknown_best
        result["n_unknown"] = int(unknown_best.size)
        result["auroc_unknown"] = metrics.auroc(best_all, unknown_best)
        result["scores"]["unknown_mean"] = float(np.mean(unknown_best))
    if threshold is not None:
        lco = metrics.rates_at_threshold(best, predicted, query_labels, impostor, threshold)
        at: dict[str, Any] = {
            "value": float(threshold),
            "accepted_right": lco.accepted_right,
            "accepted_wrong": lco.accepted_wrong,
            "rejected": lco.rejected,
            "false_accept_leave_class_out": lco.false_accept if has_lco else None,
        }
        if unknown_best is not None:
            at["false_accept_unknown"] = metrics.false_accept_rate(unknown_best, threshold)
        at["margins"] = [
            vars(r)
            for r in metrics.rates_with_margins(products, scores, query_labels, threshold, MARGINS)
        ]
        result["at_threshold"] = at
    if has_lco:
        # Diagnosis only, not deployable (chosen on the queries themselves): separates what the
        # embedding can do from how well the calibrated threshold transfers to new products.
        oracle_value = metrics.threshold_for_far(impostor, ORACLE_FAR)
        oracle = metrics.rates_at_threshold(best, predicted, query_labels, impostor, oracle_value)
        result["at_oracle_threshold"] = {
            "note": f"threshold giving {ORACLE_FAR:.0%} leave-class-out FAR on these queries "
            "(chosen on the test data: a diagnosis, not a deployable figure)",
            "value": oracle_value,
            "accepted_right": oracle.accepted_right,
            "false_accept_leave_class_out": oracle.false_accept,
        }
    return result, arrays


def _device_adaptation(
    embedder: ImageEmbedder, enroll: np.ndarray, labels: Sequence[str]
) -> tuple[np.ndarray | None, float, str] | None:
    """(centre, threshold, why) the device would use for this gallery with a format-2 bundle;
    None for Keras models and bundles without an adaptation block. The leave-class-out false
    accepts at it are then slightly optimistic: the device would set the threshold without the
    left-out product (bench/domains.py measures exactly that)."""
    policy_of = getattr(embedder, "matching_policy", None)
    if policy_of is None:
        return None
    policy = dataclasses.replace(policy_of(), fixed_threshold=None)
    if not policy.adaptive:
        return None
    matcher, decision = policy.build(enroll, list(labels))
    return matcher.centre, decision.value, decision.reason


def _shared_files(a: Split, b: Split) -> list[Path]:
    def files(split: Split) -> set[Path]:
        return {Path(p).resolve() for paths in split.values() for p in paths}

    return sorted(files(a) & files(b))


def _resolve_splits(
    args_enroll: Path | None,
    args_query: Path | None,
    protocol_file: Path | None,
    data_root: Path | None,
) -> tuple[Split, Split, dict[str, Any]]:
    if protocol_file is not None:
        if args_enroll is not None or args_query is not None:
            raise ValueError("give either --protocol or --enroll/--query, not both")
        proto = read_protocol(protocol_file, data_root)
        return (
            proto.enroll,
            proto.query,
            {
                "protocol": str(protocol_file),
                "protocol_name": proto.name,
                "data_root": str(proto.data_root),
            },
        )
    if args_enroll is None or args_query is None:
        raise ValueError(
            "give --enroll DIR and --query DIR (folder-per-product trees), or --protocol"
        )
    return (
        scan_tree(args_enroll, what="--enroll"),
        scan_tree(args_query, what="--query"),
        {"enroll": str(args_enroll), "query": str(args_query)},
    )


def evaluate(
    model: str | Path | ImageEmbedder,
    out_dir: str | Path,
    *,
    enroll: Path | None = None,
    query: Path | None = None,
    protocol: Path | None = None,
    data_root: Path | None = None,
    unknown: Path | None = None,
    shots: int | None = None,
    threshold: float | None = None,
    plots: bool = True,
    progress: bool = True,
    num_threads: int = 2,
) -> dict[str, Any]:
    """Run the evaluation and write REPORT_DIR; returns the report dict."""
    start = time.monotonic()
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out {out_dir} is a file: give a folder for the report")
    enroll_split, query_split, source = _resolve_splits(enroll, query, protocol, data_root)
    enroll_split, short = cap_shots(enroll_split, shots)
    shared = _shared_files(enroll_split, query_split)
    if shared:
        # A query identical to an enrollment shot scores 1.0: the figures would mean nothing.
        raise ValueError(
            f"{len(shared)} image(s) are both enrollment shots and queries (e.g. {shared[0]}): "
            "give --enroll and --query photos that do not overlap"
        )
    unknown_split: Split = scan_tree(unknown, what="--unknown") if unknown is not None else {}
    not_enrolled = sorted(set(query_split) - set(enroll_split))
    if not_enrolled:
        if unknown is None:
            raise ValueError(
                f"query product(s) {not_enrolled} have no enrollment images; enroll them, or "
                "pass their photos as --unknown DIR to measure them as unknown products"
            )
        logger.warning("query products without enrollment, counted as unknown: %s", not_enrolled)
        for p in not_enrolled:
            unknown_split[f"{p}"] = query_split.pop(p)
        if not query_split:
            raise ValueError("no query product is enrolled; nothing to recognise")
    overlap = sorted(set(unknown_split) & set(enroll_split))
    if overlap:
        raise ValueError(f"--unknown product(s) {overlap} are also enrolled; they are not unknown")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    embedder = model if isinstance(model, ImageEmbedder) else open_model(model, num_threads)
    try:
        e_emb, e_lab, e_paths = embed_split(
            embedder, enroll_split, label="enroll", progress=progress
        )
        q_emb, q_lab, q_paths = embed_split(embedder, query_split, label="query", progress=progress)
        u_emb = None
        u_lab: list[str] = []
        if unknown_split:
            u_emb, u_lab, _ = embed_split(
                embedder, unknown_split, label="unknown", progress=progress
            )
        threshold_source = "--threshold"
        adaptive = _device_adaptation(embedder, e_emb, e_lab)
        if adaptive is not None:
            # Format-2 bundle: match as the device does, on embeddings centred for this gallery,
            # at the threshold the device would set for it (unless --threshold).
            mu, device_threshold, why = adaptive
            e_emb, q_emb = centre(e_emb, mu), centre(q_emb, mu)
            if u_emb is not None:
                u_emb = centre(u_emb, mu)
            if threshold is None:
                threshold, threshold_source = device_threshold, f"device (adaptive: {why})"
        if threshold is None:
            threshold = embedder.threshold
            threshold_source = "model" if threshold is not None else "none"
        result, arrays = evaluate_embeddings(
            e_emb,
            e_lab,
            q_emb,
            q_lab,
            unknown_emb=u_emb,
            threshold=threshold,
            use_device_matcher=embedder.kind == "tflite",
        )
        described = embedder.describe()
    finally:
        if not isinstance(model, ImageEmbedder):
            embedder.close()

    report: dict[str, Any] = {
        "format": "prodrec-eval",
        "format_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": described,
        "data": {
            **source,
            "unknown": str(unknown) if unknown is not None else None,
            "shots": shots,
            "shots_used": {p: len(v) for p, v in enroll_split.items()},
            "products_with_fewer_shots": short,
            "query_products_not_enrolled": not_enrolled,
            "unknown_products": sorted(unknown_split),
        },
        "threshold_source": threshold_source,
        "threshold_info": embedder.threshold_info if threshold_source == "model" else {},
        "metrics": result,
        "seconds": round(time.monotonic() - start, 1),
        "plots": {},
    }
    if threshold is None:
        report["note"] = (
            "no threshold: the model has none (run `python -m training calibrate RUN_DIR`) and "
            "--threshold was not given; rates at a threshold are not reported"
        )
    np.savez_compressed(
        out_dir / "embeddings.npz",
        enroll=e_emb,
        enroll_labels=np.array(e_lab),
        enroll_paths=np.array([str(p) for p in e_paths]),
        query=q_emb,
        query_labels=np.array(q_lab),
        query_paths=np.array([str(p) for p in q_paths]),
        unknown=u_emb if u_emb is not None else np.zeros((0, e_emb.shape[1]), np.float32),
        unknown_labels=np.array(u_lab),
    )
    if plots:
        report["plots"] = _write_plots(out_dir, arrays, q_emb, q_lab, e_emb, e_lab, threshold)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / SUMMARY_FILE).write_text(summary_markdown(report), encoding="utf-8")
    return report


def _write_plots(
    out_dir: Path,
    arrays: dict[str, np.ndarray],
    q_emb: np.ndarray,
    q_lab: list[str],
    e_emb: np.ndarray,
    e_lab: list[str],
    threshold: float | None,
) -> dict[str, str]:
    from . import eval_plots

    written: dict[str, str] = {}
    written["histogram"] = eval_plots.plot_score_histograms(
        out_dir / "scores_hist.png",
        arrays["genuine"],
        arrays["impostor"],
        unknown=arrays.get("unknown"),
        threshold=threshold,
    ).name
    curves = {}
    if np.isfinite(arrays["impostor"]).any():  # none with a single enrolled product
        curves["leave-class-out unknowns"] = (arrays["best"], arrays["impostor"])
    if "unknown" in arrays:
        curves["real unknown products"] = (arrays["best"], arrays["unknown"])
    if curves:
        written["roc"] = eval_plots.plot_roc(out_dir / "roc.png", curves, threshold=threshold).name
    tsne = eval_plots.plot_embedding_map(
        out_dir / "tsne.png", q_emb, q_lab, enroll_embeddings=e_emb, enroll_labels=e_lab
    )
    if tsne is not None:
        written["embedding_map"] = tsne.name
    return written


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    d = report["data"]
    lines = [
        "# Evaluation summary",
        "",
        f"- model: `{report['model']['name']}` ({report['model']['kind']}, "
        f"{report['model']['input_size'][0]} px, {report['model']['embedding_dim']}-d)",
        f"- {m['n_products']} enrolled products, {m['n_enroll']} enrollment shots, "
        f"{m['n_query']} queries"
        + (f", {m.get('n_unknown', 0)} unknown-product images" if "n_unknown" in m else ""),
        "",
        "| metric | value |",
        "|---|---|",
        f"| P@1 | {m['p_at_1']:.3f} |",
        f"| MAP@R | {m['map_at_r']:.3f} |",
        "| open-set AUROC (leave-class-out) | "
        + (
            f"{m['auroc_leave_class_out']:.3f} |"
            if m["auroc_leave_class_out"] is not None
            else "n/a (needs 2+ enrolled products) |"
        ),
    ]
    if "auroc_unknown" in m:
        lines.append(f"| open-set AUROC (real unknowns) | {m['auroc_unknown']:.3f} |")
    at = m.get("at_threshold")
    if at:
        lines += [
            f"| threshold ({report['threshold_source']}) | {at['value']:.4f} |",
            f"| known: accepted and right | {_pct(at['accepted_right'])} |",
            f"| known: accepted but wrong | {_pct(at['accepted_wrong'])} |",
            f"| known: rejected as unknown | {_pct(at['rejected'])} |",
            f"| false accepts (leave-class-out) | {_pct(at['false_accept_leave_class_out'])} |",
        ]
        if "false_accept_unknown" in at:
            lines.append(f"| false accepts (real unknowns) | {_pct(at['false_accept_unknown'])} |")
        if at.get("margins"):
            lines += [
                "",
                "The device's answers at this threshold with an ambiguity margin (`[matcher] "
                'ambiguity_margin`: "ambiguous" when the best two products are closer than it); '
                "unknowns are leave-class-out:",
                "",
                "| margin | known: right | wrong | ambiguous | unknown | unknowns: accepted | "
                "ambiguous |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['margin']:.2f} | {_pct(r['right'])} | {_pct(r['wrong'])} | "
                f"{_pct(r['ambiguous'])} | {_pct(r['rejected'])} | {_pct(r['false_accept'])} | "
                f"{_pct(r['unknown_ambiguous'])} |"
                for r in at["margins"]
            ]
    else:
        lines += ["", report.get("note", "")]
    oracle = m.get("at_oracle_threshold")
    if oracle:
        lines += [
            "",
            f"Diagnosis (not deployable): at {oracle['value']:.4f}, the threshold chosen on these "
            f"queries for <= {ORACLE_FAR:.0%} leave-class-out false accepts (achieved "
            f"{_pct(oracle['false_accept_leave_class_out'])}), "
            f"{_pct(oracle['accepted_right'])} of known queries would be accepted and right.",
        ]
    if d.get("products_with_fewer_shots"):
        lines += [
            "",
            f"Products with fewer shots than --shots {d['shots']}: "
            + ", ".join(f"{k} ({v})" for k, v in d["products_with_fewer_shots"].items()),
        ]
    if d.get("query_products_not_enrolled"):
        lines += [
            "",
            "Query products not enrolled (counted as unknown): "
            + ", ".join(d["query_products_not_enrolled"]),
        ]
    worst = sorted(m["per_product_accuracy"].items(), key=lambda kv: kv[1])[:5]
    lines += ["", "Lowest per-product P@1: " + ", ".join(f"{k} {v:.2f}" for k, v in worst)]
    if m["confused_pairs"]:
        lines += ["", "Most confused (true -> predicted, queries):"]
        lines += [
            f"- {c['true']} -> {c['predicted']}: {c['count']}" for c in m["confused_pairs"][:5]
        ]
    if report.get("plots"):
        lines += [""] + [f"![{k}]({v})" for k, v in report["plots"].items()]
    return "\n".join(lines) + "\n"


# --- CLI -----------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `evaluate` on the `python -m training` sub-command parser."""
    p = subparsers.add_parser(
        "evaluate",
        help="few-shot open-set evaluation of an extractor or a bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="RUN_DIR, extractor.keras, or a bundle folder (model.json + model.tflite)",
    )
    p.add_argument("--enroll", type=Path, help="folder-per-product enrollment images")
    p.add_argument("--query", type=Path, help="folder-per-product query images")
    p.add_argument(
        "--unknown", type=Path, help="folder-per-product images of products never enrolled"
    )
    p.add_argument("--protocol", type=Path, help="protocol.json with enroll/query lists")
    p.add_argument(
        "--data-root",
        type=Path,
        help="folder the protocol's paths are relative to (default: its own folder)",
    )
    p.add_argument(
        "--shots", type=int, help="use at most N enrollment images per product (sorted names)"
    )
    p.add_argument("--threshold", type=float, help="override the model's calibrated threshold")
    p.add_argument("--out", required=True, type=Path, help="REPORT_DIR to write")
    p.add_argument("--num-threads", type=int, default=2, help="TFLite interpreter threads")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold is a cosine similarity in [-1, 1], got {args.threshold}")
    report = evaluate(
        args.model,
        args.out,
        enroll=args.enroll,
        query=args.query,
        protocol=args.protocol,
        data_root=args.data_root,
        unknown=args.unknown,
        shots=args.shots,
        threshold=args.threshold,
        plots=not args.no_plots,
        num_threads=args.num_threads,
    )
    print(summary_markdown(report))
    print(f"report: {args.out / REPORT_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
