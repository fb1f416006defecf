"""The serving core without services: signature checks and the folded linear form."""

from __future__ import annotations

import numpy as np
import pytest

from nimbus.errors import Unprocessable
from nimbus.serving.forms import FoldedLinear, fold_linear
from nimbus.serving.signature import Signature

SIG = Signature.from_specs([("x", "double", True), ("n", "long", True), ("city", "string", True),
                            ("ok", "boolean", False), ("at", "datetime", True)])
GOOD = {"x": 1, "n": 2, "city": "nice", "ok": None, "at": "2026-01-02"}


def test_good_records_come_out_as_typed_columns() -> None:
    columns = SIG.arrays([GOOD, {**GOOD, "x": 2.5, "ok": True}])
    assert columns["x"].dtype == np.float64 and columns["x"].tolist() == [1.0, 2.5]
    assert columns["n"].dtype == np.int64 and columns["at"].dtype == np.dtype("datetime64[ns]")
    assert columns["ok"].tolist() == [None, True]


@pytest.mark.parametrize(("record", "loc", "words"), [
    ({k: v for k, v in GOOD.items() if k != "n"}, "n", "missing column n (long)"),
    ({**GOOD, "extra": 1}, "extra", "unknown column extra"),
    ({**GOOD, "n": True}, "n", "expected long, got bool"),
    ({**GOOD, "x": "1"}, "x", "expected double, got str"),
    ({**GOOD, "at": "yesterday"}, "at", "ISO-8601"),
    ({**GOOD, "city": None}, "city", "null, but city is required"),
])
def test_every_bad_column_is_named_with_its_record(record: dict, loc: str, words: str) -> None:
    with pytest.raises(Unprocessable) as caught:
        SIG.arrays([GOOD, record])
    [error] = caught.value.errors
    assert error["loc"] == ["body", 1, loc] and words in error["msg"]


def test_the_limit_and_empty_bodies_are_refused() -> None:
    with pytest.raises(Unprocessable, match="3 records; at most 2"):
        SIG.arrays([GOOD] * 3, limit=2)
    with pytest.raises(Unprocessable, match="no records"):
        SIG.arrays([])


@pytest.mark.parametrize("classes", [2, 3])
def test_a_scaled_logistic_pipeline_folds_into_the_same_probabilities(classes: int) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, size=(300, 4))
    y = np.digitize(x[:, 0] + rng.normal(size=300), np.quantile(x[:, 0], np.linspace(0, 1, classes + 1)[1:-1]))
    model = make_pipeline(StandardScaler(), StandardScaler(with_mean=False), LogisticRegression()).fit(x, y)
    folded = FoldedLinear(*fold_linear(model), ("a", "b", "c", "d"), classifier=True)
    got = folded.output({n: x[:, j] for j, n in enumerate("abcd")})
    np.testing.assert_allclose(got, model.predict_proba(x), rtol=0, atol=1e-10)


def test_a_model_that_is_not_scaler_plus_linear_does_not_fold() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    assert fold_linear(HistGradientBoostingRegressor()) is None
    assert fold_linear(make_pipeline(MinMaxScaler(), Ridge())) is None
