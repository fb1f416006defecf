"""The report of an AutoML job (JSON + HTML in S3): leaderboard, held-out metric with its
interval, confusion matrix or residuals, calibration, permutation importances; and the
winner exported as a joblib file beside it (the MLflow model is in the registry)."""

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
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>AutoML job {esc(report['job'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>AutoML job {esc(report['job'])}</h1>
<p>Winner (refit and registered): {esc(next(r for r in report['leaderboard'] if r.get('chosen'))['algorithm'])}; held-out {esc(test['metric'])} {test['value']:.4f}
(95% CI {test['ci95'][0]:.4f} – {test['ci95'][1]:.4f}, {test['rows']} rows); {report['trials']} configurations tried.</p>
<h2>Leaderboard (validation score)</h2><table><tr><th>#</th><th>algorithm</th><th>score</th><th>complete</th>
<th>parameters</th></tr>{rows}</table>{cm}
<h2>Permutation importance (held-out)</h2><table>{imps}</table></body></html>"""


def publish(settings: Settings, job_id: str, report: dict[str, Any], model: Any) -> dict[str, str]:
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
    return {"report": f"{base}/report.json", "report_html": f"{base}/report.html", "joblib": f"{base}/model.joblib"}
