"""Small registry classifiers for tests that serve a model through predict (the dashboard's tests)."""

from __future__ import annotations

from nimbus.config import Settings
from nimbus.stores.registry import Registry


def register_versions(settings: Settings, name: str, experiment: str, columns: tuple[str, str],
                      regularisation: tuple[float, ...] = (1.0, 0.3), seed: int = 3) -> list[str]:
    """One registered version of ``name`` per regularisation strength: logistic regressions on two numeric
    columns (the label: the first above the second); returns the versions, in order."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = pd.DataFrame({column: rng.normal(0, 1, 300) for column in columns})
    y = (x[columns[0]] > x[columns[1]]).astype(int)
    registry = Registry.for_settings(settings)
    versions = []
    for c in regularisation:
        model = LogisticRegression(C=c).fit(x, y)
        with registry.tracked_run(experiment, f"c{c}") as run:
            versions.append(run.log_sklearn(model, x.head(5), model.predict_proba(x.head(5)), name,
                                            predict_fn="predict_proba"))
    return versions
