"""The report of an AutoML job (JSON + HTML in S3): leaderboard, held-out metric with its
interval, confusion matrix or residuals, calibration, permutation importances, SHAP
explanations, learning curve; and the winner exported beside it as a joblib file and, where
it converts, ONNX (the MLflow model is in the registry)."""

from __future__ import annotations

import html
import io
import json
from typing import Any

import numpy as np
import pandas as pd

from nimbus.config import Settings
from nimbus.stores.objects import ObjectStore


def diagnostics(model: Any, x: pd.DataFrame, y: pd.Series, task: str) -> dict[str, Any]:
    if task == "classification":
        from sklearn.metrics import confusion_matrix

        predicted = model.predict(x)
        labels = sorted(pd.unique(pd.concat([y, pd.Series(predicted)])).tolist(), key=str)
        out: dict[str, Any] = {"labels": [str(v) for v in labels],
                               "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist()}
        if hasattr(model, "predict_proba") and len(labels) == 2:
            from sklearn.calibration import calibration_curve

            prob = model.predict_proba(x)[:, 1]
            positive = (y == model.classes_[1]).astype(int)
            true, pred = calibration_curve(positive, prob, n_bins=10, strategy="quantile")
            out["calibration"] = {"predicted": pred.tolist(), "observed": true.tolist()}
        return out
    residuals = np.asarray(y, float) - model.predict(x)
    hist, edges = np.histogram(residuals, 20)
    return {"residuals": {"mean": float(residuals.mean()), "std": float(residuals.std()),
                          "histogram": hist.tolist(), "edges": edges.tolist()}}


def to_html(report: dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{r['rank']}</td><td>{esc(r['algorithm'])}</td><td>{r['score']:.4f}</td>"
                   f"<td>{'yes' if r['complete'] else 'stopped early'}</td><td>{esc(json.dumps(r['params']))}</td></tr>"
                   for r in report["leaderboard"][:30])
    imps = "".join(f"<tr><td>{esc(i['feature'])}</td><td>{i['importance']:.4f} ± {i['std']:.4f}</td></tr>"
                   for i in report["importances"][:20])
    test = report["test"]
    diag = report.get("diagnostics", {})
    cm = ""
    if "confusion_matrix" in diag:
        head = "".join(f"<th>{esc(v)}</th>" for v in diag["labels"])
        body = "".join(f"<tr><th>{esc(diag['labels'][i])}</th>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                       for i, row in enumerate(diag["confusion_matrix"]))
        cm = f"<h2>Confusion matrix (rows: true)</h2><table><tr><th></th>{head}</tr>{body}</table>"
    winner = next(r for r in report["leaderboard"] if r.get("chosen"))["algorithm"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>AutoML job {esc(report['job'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>AutoML job {esc(report['job'])}</h1>
<p>Winner (refit and registered): {esc(winner)}; held-out {esc(test['metric'])} {test['value']:.4f}
(95% CI {test['ci95'][0]:.4f} – {test['ci95'][1]:.4f}, {test['rows']} rows); {report['trials']} configurations tried.</p>
<h2>Leaderboard (validation score)</h2><table><tr><th>#</th><th>algorithm</th><th>score</th><th>complete</th>
<th>parameters</th></tr>{rows}</table>{cm}
<h2>Permutation importance (held-out)</h2><table>{imps}</table>
{explanations_html(report.get("explanations") or {})}{curve_html(report.get("learning_curve") or {})}
{onnx_html(report.get("onnx") or {})}</body></html>"""


def explanations_html(ex: dict[str, Any]) -> str:
    esc = html.escape
    if "rows" not in ex:
        return f"<h2>SHAP explanations</h2><p>Not computed: {esc(str(ex.get('skipped', 'no data')))}</p>"
    rows = "".join(
        f"<tr><td>{esc(str(r['row']))}</td><td>{esc(str(r.get('class', '')))}</td><td>{r['base_value']:.4f}</td>"
        f"<td>{r['prediction']:.4f}</td><td>" + "<br>".join(
            f"{esc(c['feature'])} = {esc(str(c['value']))}: {c['contribution']:+.4f}" for c in r["contributions"])
        + f"<br>others: {r['others']:+.4f}</td></tr>" for r in ex["rows"])
    return (f"<h2>SHAP explanations ({esc(ex['output'])}; held-out rows)</h2><p>{esc(ex['method'])}, "
            f"{ex['background_rows']} background rows, {ex['permutations']} permutation(s); base value + "
            f"contributions = prediction.</p><table><tr><th>row</th><th>class</th><th>base value</th>"
            f"<th>prediction</th><th>top contributions</th></tr>{rows}</table>")


def curve_html(curve: dict[str, Any]) -> str:
    esc = html.escape
    if "points" not in curve:
        return f"<h2>Learning curve</h2><p>Not computed: {esc(str(curve.get('skipped', 'no data')))}</p>"
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    rows = "".join(f"<tr><td>{p['train_rows']}</td><td>{fmt(p['train_score'])}</td>"
                   f"<td>{fmt(p['validation_score'])} ± {fmt(p['validation_std'])}</td></tr>" for p in curve["points"])
    note = f"<p>{esc(curve['note'])}</p>" if curve.get("note") else ""
    return (f"<h2>Learning curve ({esc(curve['metric'])}, {curve['folds']}-fold, {curve['rows']} rows)</h2>"
            f"<table><tr><th>training rows</th><th>training score</th><th>validation score</th></tr>{rows}</table>{note}")


def onnx_html(info: dict[str, Any]) -> str:
    if info.get("error"):
        return f"<h2>ONNX export</h2><p>None: {html.escape(info['error'])}</p>"
    check = info.get("check", {})
    return (f"<h2>ONNX export</h2><p>model.onnx ({info.get('bytes')} bytes, numbers as {info.get('numeric_inputs')}), "
            f"checked against scikit-learn on {check.get('rows')} held-out rows: "
            f"{html.escape(json.dumps({k: v for k, v in check.items() if k != 'rows'}))}</p>")


def publish(settings: Settings, job_id: str, report: dict[str, Any], model: Any, onnx: Any = None) -> dict[str, str]:
    import joblib

    store = ObjectStore.for_settings(settings)
    prefix = f"automl/{job_id}"
    store.put_bytes(settings.artifacts_bucket, f"{prefix}/report.json",
                    json.dumps(report, default=str, indent=2).encode(), "application/json")
    store.put_bytes(settings.artifacts_bucket, f"{prefix}/report.html", to_html(report).encode(), "text/html")
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    store.put_bytes(settings.artifacts_bucket, f"{prefix}/model.joblib", buffer.getvalue())
    base = f"s3://{settings.artifacts_bucket}/{prefix}"
    exports = {"report": f"{base}/report.json", "report_html": f"{base}/report.html", "joblib": f"{base}/model.joblib"}
    if onnx is not None and onnx.model is not None:
        store.put_bytes(settings.artifacts_bucket, f"{prefix}/model.onnx", onnx.model, "application/octet-stream")
        exports["onnx"] = f"{base}/model.onnx"
    elif onnx is not None:
        exports["onnx_error"] = onnx.error
    return exports
