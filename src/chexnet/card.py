"""``chexnet card RUN [--facts card.yaml]``: a model card per run (Mitchell et al. 2019).

Writes ``RUN/MODEL_CARD.md`` (Markdown with YAML front matter, the Hugging Face model-card convention) and
``RUN/model_card.json`` in the shape of Google's Model Card Toolkit schema:

``model_details``            name, overview, version (chexnet's, the git commit where the package is a checkout),
                             owners, license, references, the checkpoint (epoch, step, SHA-256 run.json records)
``model_parameters``         architecture, initial weights, input format (the preprocessing contract), output
                             labels, every hyperparameter (the config), ``data``: the cache (dataset, digest,
                             options: label mapping and uncertainty policy), per split the images, patients,
                             prevalence per label and demographics (sex, age, view; CLAIM item 34)
``quantitative_analysis``    ``performance_metrics``: one entry per (metric, label[, slice]) with ``value`` and
                             ``confidence_interval`` {lower_bound, upper_bound}: AUROC (auroc.csv), calibration
                             (calibration.csv), operating points (operating_points.csv), subgroup AUROCs with n
                             (subgroups.csv, ``slice`` "sex=F" ...); copied from the evaluation's files, never recomputed
``considerations``           intended use, out-of-scope uses, limitations, ethical considerations: from ``card.yaml``
                             (what only a person can say), plus the evaluation's own caveats
``training``, ``calibrator``, ``export``: software versions, device, training time; the calibrator fitted for the
checkpoint; the export's SHA-256 and preprocessing contract where ``RUN/export/model.onnx`` exists.

The evaluation is the run's own on its test split (``RUN/eval/test/``, by ``chexnet evaluate RUN``); without it
the card is refused. Without ``card.yaml``, or with any of :data:`REQUIRED` missing from it, both files are
still written with those sections marked MISSING, and :func:`write_card` raises naming the fields to supply.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from chexnet import __version__
from chexnet.checkpoint import read_run_info
from chexnet.fileio import atomic_write

REQUIRED = ("intended_use", "out_of_scope_uses", "limitations", "ethical_considerations")
OPTIONAL = ("owners", "license", "references", "name", "overview")
MISSING = "MISSING: supply it in card.yaml"


class CardError(ValueError):
    """The card was written with sections marked missing; the message names the card.yaml fields to supply."""


def _facts(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    try:
        facts = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: unreadable card facts ({exc})") from None
    if not isinstance(facts, dict):
        raise ValueError(f"{path}: expected a mapping of fields ({', '.join(REQUIRED + OPTIONAL)})")
    unknown = sorted(set(facts) - set(REQUIRED + OPTIONAL))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(REQUIRED + OPTIONAL)}")
    return facts


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _num(v):
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v)


def _metric(kind: str, label: str, value, low=None, high=None, slice_: str | None = None, **extra) -> dict:
    out = {"type": kind, "label": label, "value": _num(value)}
    if slice_:
        out["slice"] = slice_
    if low is not None or high is not None:
        out["confidence_interval"] = {"lower_bound": _num(low), "upper_bound": _num(high)}
    out.update(extra)
    return out


def _performance(ev: Path) -> list[dict]:
    """Every number of the evaluation's tables, as Model Card Toolkit performance metrics."""
    metrics = []
    auroc = pd.read_csv(ev / "auroc.csv", index_col=0)
    for label, row in auroc.iterrows():
        if "note" in row and isinstance(row.get("note"), str) and row["note"].startswith("derived"):
            continue
        metrics.append(_metric("auroc", str(label), row["auroc"], row.get("auroc_ci_low"), row.get("auroc_ci_high"),
                               prevalence=_num(row.get("prevalence"))))
    if (ev / "calibration.csv").is_file():
        from chexnet.calibration import METRICS

        cal = pd.read_csv(ev / "calibration.csv", index_col=0)
        for label, row in cal.iterrows():
            for m in METRICS:
                metrics.append(_metric(m, str(label), row[m], row[f"{m}_low"], row[f"{m}_high"]))
    if (ev / "operating_points.csv").is_file():
        from chexnet.operating_points import COLUMNS

        ops = pd.read_csv(ev / "operating_points.csv", index_col=0)
        for label, row in ops.iterrows():
            for m in COLUMNS:
                metrics.append(_metric(m, str(label), row[m], row[f"{m}_low"], row[f"{m}_high"],
                                       operating_point=row["rule"], threshold=_num(row["threshold"])))
    if (ev / "subgroups.csv").is_file():
        sub = pd.read_csv(ev / "subgroups.csv", keep_default_na=False, na_values=[""])
        for row in sub.itertuples(index=False):
            metrics.append(_metric("auroc", str(row.pathology), row.auroc, row.auroc_ci_low, row.auroc_ci_high,
                                   slice_=f"{row.group}={row.subgroup}", n=int(row.n), positives=int(row.n_pos)))
    return metrics


def _demographics(index: pd.DataFrame) -> dict:
    out = {}
    for split, part in index.groupby("split"):
        age = part["age"].dropna()
        out[str(split)] = {
            "images": int(len(part)), "patients": int(part["patient_id"].nunique()),
            "sex": {str(k): int(v) for k, v in part["sex"].replace("", "unknown").value_counts().items()},
            "view": {str(k): int(v) for k, v in part["view"].replace("", "unknown").value_counts().items()},
            "age": ({"median": float(age.median()), "q1": float(age.quantile(0.25)), "q3": float(age.quantile(0.75)),
                     "known": int(len(age))} if len(age) else {"known": 0}),
        }
    return out


def _data(run_info: dict) -> dict:
    from chexnet.data.cache import load_cache

    cache = Path(run_info.get("cache", ""))
    out = {"cache": str(cache), "index_sha256": run_info.get("cache_index_sha256"),
           "dataset": run_info.get("cache_dataset"), "splits": run_info.get("cache_splits")}
    if not (cache / "meta.json").is_file():
        out["note"] = "the training cache is not here: prevalence and demographics not included"
        return out
    _, index, meta = load_cache(cache)
    args = meta.get("arguments") or {}
    out.update({"options": args.get("options") or {}, "parts": [p["name"] for p in meta.get("parts", [])] or None,
                "label_mapping": (meta.get("source") or {}).get("labels"),
                "prevalence": {s: {n: (c["positive"] / (c["positive"] + c["negative"]) if c["positive"] + c["negative"]
                                       else None) for n, c in counts.items()}
                               for s, counts in (meta.get("label_counts") or {}).items()},
                "demographics": _demographics(index)})
    return out


def _training(run: Path, run_info: dict) -> dict:
    times = []
    path = run / "metrics.jsonl"
    if path.is_file():
        times = [json.loads(line).get("time") for line in path.read_text().splitlines() if line.strip()]
        times = [t for t in times if t]
    return {"versions": run_info.get("versions"), "device": run_info.get("device"),
            "world_size": run_info.get("world_size"), "launcher": run_info.get("launcher"),
            "logged_seconds": round(times[-1] - times[0], 1) if len(times) > 1 else None,
            "created": run_info.get("created")}


def _export(run: Path) -> dict | None:
    onnx = run / "export" / "model.onnx"
    if not onnx.is_file():
        return None
    digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
    out = {"file": str(onnx), "sha256": digest}
    try:
        import onnx as onnx_lib

        from chexnet import onnx_metadata as M

        meta = {p.key: p.value for p in onnx_lib.load(str(onnx), load_external_data=False).metadata_props}
        out["preprocessing"] = json.loads(meta.get(M.PREPROCESSING, "null"))
        out["calibration"] = json.loads(meta.get(M.CALIBRATION, "null"))
    except ImportError:
        out["note"] = "onnx not installed: the contract not read"
    return out


def build_card(run: str | Path, facts: dict) -> dict:
    """The model_card.json contents (see the module)."""
    run = Path(run)
    run_info = read_run_info(run)
    ev = run / "eval" / "test"
    if not (ev / "metrics.json").is_file():
        raise FileNotFoundError(f"{run}: no evaluation on its test split ({ev / 'metrics.json'}): run chexnet "
                                f"evaluate {run} first")
    evaluation = json.loads((ev / "metrics.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    context = evaluation.get("context", {})
    checkpoint = Path(context.get("checkpoint", "best.pt")).name
    recorded = (run_info.get("checkpoints") or {}).get(checkpoint, {})
    calibrator = run / "calibrator.json"
    considerations = {k: facts.get(k, MISSING) for k in REQUIRED}
    considerations["evaluation_caveats"] = evaluation.get("notes", [])
    return {
        "schema": "Model Card Toolkit (model_card.schema.json) shape; chexnet card",
        "model_details": {
            "name": facts.get("name", run.name), "overview": facts.get("overview", f"{cfg.get('arch')} chest X-ray "
                                                                                  f"classifier trained with chexnet"),
            "version": {"chexnet": __version__, "git_commit": _git_commit()},
            "owners": facts.get("owners", []), "license": facts.get("license"), "references": facts.get("references", []),
            "checkpoint": {"file": checkpoint, "selected_by": context.get("selected by"),
                           "sha256": (recorded.get("sha256") or [None])[0], "epoch": recorded.get("epoch"),
                           "global_step": recorded.get("global_step")},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "model_parameters": {"model_architecture": cfg.get("arch"), "initial_weights": cfg.get("weights"),
                             "input_format": run_info.get("preprocessing"), "output_labels": run_info.get("labels"),
                             "hyperparameters": cfg, "data": _data(run_info)},
        "quantitative_analysis": {"evaluated_on": context.get("split", "test"), "probabilities": context.get("probabilities"),
                                  "performance_metrics": _performance(ev)},
        "considerations": considerations,
        "training": _training(run, run_info),
        "calibrator": json.loads(calibrator.read_text()) if calibrator.is_file() else None,
        "export": _export(run),
    }


def _markdown(card: dict) -> str:
    d, p, q, c = card["model_details"], card["model_parameters"], card["quantitative_analysis"], card["considerations"]
    front = {"library_name": "chexnet", "tags": ["chest-x-ray", "medical-imaging", "multi-label-classification"],
             "license": d.get("license") or "other", "model_name": d["name"],
             "metrics": sorted({m["type"] for m in q["performance_metrics"]})}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# Model card: {d['name']}", "",
             d["overview"], "", "## Model details", "",
             f"- chexnet {d['version']['chexnet']} (git {d['version']['git_commit'] or 'unknown'})",
             f"- checkpoint {d['checkpoint']['file']} (epoch {d['checkpoint']['epoch']}, step "
             f"{d['checkpoint']['global_step']}; selected by {d['checkpoint']['selected_by']}; sha256 "
             f"{d['checkpoint']['sha256']})",
             f"- architecture {p['model_architecture']}, initial weights {p['initial_weights']}",
             f"- input: {json.dumps(p['input_format'])}", f"- labels: {', '.join(p['output_labels'] or [])}", ""]
    for title, key in (("Intended use", "intended_use"), ("Out-of-scope uses", "out_of_scope_uses"),
                       ("Limitations", "limitations"), ("Ethical considerations", "ethical_considerations")):
        lines += [f"## {title}", "", str(c[key]).strip(), ""]
    data = p["data"]
    lines += ["## Data", "", f"- cache {data['cache']} (dataset {data.get('dataset')}, index sha256 "
              f"{data.get('index_sha256')}), options {json.dumps(data.get('options', {}))}", ""]
    if "demographics" in data:
        lines += ["| split | images | patients | sex | age median [IQR] | view |", "|---|---:|---:|---|---|---|"]
        for split, s in data["demographics"].items():
            age = s["age"]
            ages = f"{age['median']:.0f} [{age['q1']:.0f}, {age['q3']:.0f}]" if age.get("known") else "unknown"
            lines.append(f"| {split} | {s['images']} | {s['patients']} | {json.dumps(s['sex'])} | {ages} | "
                         f"{json.dumps(s['view'])} |")
        lines.append("")
    lines += ["## Quantitative analysis", "", f"On the {q['evaluated_on']} split; probabilities: {q['probabilities']}.",
              "", "| metric | label | slice | value | 95% CI |", "|---|---|---|---:|---|"]
    for m in q["performance_metrics"]:
        ci = m.get("confidence_interval") or {}
        cell = (f"[{ci['lower_bound']:.3f}, {ci['upper_bound']:.3f}]" if ci.get("lower_bound") is not None
                and ci.get("upper_bound") is not None else "")
        name = m["type"] + (f" ({m['operating_point']})" if "operating_point" in m else "")
        value = f"{m['value']:.4f}" if m["value"] is not None else "n/a"
        lines.append(f"| {name} | {m['label']} | {m.get('slice', '')} | {value} | {cell} |")
    lines += ["", "## Evaluation caveats", ""] + [f"- {n}" for n in c["evaluation_caveats"]] + [""]
    t = card["training"]
    lines += ["## Training", "", f"- device {t['device']} x {t['world_size']} ({t['launcher']}), logged time "
              f"{t['logged_seconds']} s, versions {json.dumps(t['versions'])}", ""]
    if card["calibrator"]:
        k = card["calibrator"]
        lines += ["## Calibrator", "", f"- {k['method']} scaling fitted on val for {k['checkpoint']} (epoch {k['epoch']})",
                  ""]
    if card["export"]:
        lines += ["## Export", "", f"- {card['export']['file']} sha256 {card['export']['sha256']}", ""]
    return "\n".join(lines)


def write_card(run: str | Path, facts_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write both files (see the module); raises :class:`CardError` after writing when facts are missing."""
    run = Path(run)
    facts = _facts(facts_path)
    card = build_card(run, facts)
    md, js = run / "MODEL_CARD.md", run / "model_card.json"
    atomic_write(js, json.dumps(card, indent=2, default=str) + "\n")
    atomic_write(md, _markdown(card) + "\n")
    missing = [k for k in REQUIRED if k not in facts]
    if missing:
        raise CardError(f"{md} and {js} were written with {', '.join(missing)} marked MISSING: only a person can "
                        f"say these; put them in a card.yaml and run chexnet card {run} --facts card.yaml")
    return md, js
