"""The recommend and events apps as HTTP clients see them, against the real stores."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from nimbus.api.events import create_events_app
from nimbus.api.recommend import create_recommend_app
from nimbus.ids import REQUEST_ID_LEN, RequestSigner

KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)

pytestmark = pytest.mark.integration


@pytest.fixture
def client(live_recommender: dict) -> TestClient:
    with TestClient(create_recommend_app(live_recommender["settings"])) as c:
        yield c


@pytest.fixture
def slow_client(live_recommender: dict) -> TestClient:
    """The same app without the ASGI fast path: every request goes through FastAPI."""
    with TestClient(create_recommend_app(live_recommender["settings"], fast_path=False)) as c:
        yield c


@pytest.fixture
def events(live_recommender: dict) -> TestClient:
    with TestClient(create_events_app(live_recommender["settings"]), headers=KEY) as c:
        yield c


def known_user(live: dict) -> str:
    return str(live["features"].user_ids[0])


def test_a_known_user_gets_personalised_items_with_the_live_version(client: TestClient, live_recommender: dict) -> None:
    user = known_user(live_recommender)
    answer = client.get(f"/recommendations/{user}", params={"k": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["strategy"] == "personalized" and body["degraded"] is False
    assert body["model_version"] == live_recommender["versions"][0]
    assert body["feature_version"] == live_recommender["features"].version
    assert len(body["items"]) == 5 and len(body["request_id"]) == REQUEST_ID_LEN
    signer = RequestSigner.for_settings(live_recommender["settings"])
    assert signer.verify(body["request_id"], user) and not signer.verify(body["request_id"], user + "x")
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    recent = {str(live_recommender["features"].items.item_ids[i]) for i in live_recommender["features"].user_recent[0]
              if i >= 0}
    assert not recent & {i["item_id"] for i in body["items"]}


def test_a_new_user_gets_popular_items(client: TestClient, live_recommender: dict) -> None:
    body = client.get("/recommendations/never-seen-before").json()
    items = live_recommender["features"].items
    assert body["strategy"] == "popular"
    assert [i["item_id"] for i in body["items"]] == [str(items.item_ids[i]) for i in items.popular[:10]]


def test_a_category_filter_keeps_only_that_category(client: TestClient, live_recommender: dict) -> None:
    category = str(live_recommender["features"].items.categories[0])
    body = client.get(f"/recommendations/{known_user(live_recommender)}", params={"category": category}).json()
    assert body["items"] and {i["category"] for i in body["items"]} == {category}


@pytest.mark.parametrize(
    ("query", "status", "fragment"),
    [
        ("k=0", 422, "greater than or equal to 1"),
        ("k=101", 422, "less than or equal to 100"),
        ("k=ten", 422, "valid integer"),
        ("kk=3", 400, "unknown query parameter(s): kk"),
        ("k=3&debug=1", 400, "debug"),
        ("category=no-such-category", 400, "unknown category 'no-such-category'"),
    ],
)
def test_bad_parameters_get_a_4xx_naming_the_problem(client: TestClient, live_recommender: dict, query: str,
                                                     status: int, fragment: str) -> None:
    answer = client.get(f"/recommendations/{known_user(live_recommender)}?{query}")
    assert answer.status_code == status
    assert fragment in answer.text


def test_an_oversized_body_is_refused(client: TestClient, live_recommender: dict) -> None:
    answer = client.request("GET", f"/recommendations/{known_user(live_recommender)}", content=b"x" * 20_000)
    assert answer.status_code == 413 and "limit is 16384" in answer.json()["detail"]


@pytest.mark.parametrize(
    "url",
    ["/recommendations/{u}", "/recommendations/{u}?k=1", "/recommendations/{u}?k=100", "/recommendations/{u}?k=0",
     "/recommendations/{u}?k=+3", "/recommendations/{u}?k=3&k=4", "/recommendations/{u}?category=",
     "/recommendations/{u}?category={c}", "/recommendations/{u}?x=1", "/recommendations/" + "u" * 129,
     "/recommendations/" + "u" * 128, "/recommendations/nobody?k=7", "/recommendations/{u}:recent",
     "/recommendations/u%3A1", "/recommendations/u%201", "/recommendations/%F0%9F%98%80", "/recommendations/a*b",
     "/recommendations/u.1@x_y-z"],
)
def test_the_fast_path_answers_exactly_as_the_fastapi_route(client: TestClient, slow_client: TestClient,
                                                            live_recommender: dict, url: str) -> None:
    url = url.format(u=known_user(live_recommender), c=live_recommender["features"].items.categories[1])
    fast, slow = client.get(url), slow_client.get(url)
    assert fast.status_code == slow.status_code, url
    if fast.status_code == 200:
        strip = lambda body: {k: v for k, v in body.items() if k != "request_id"}  # noqa: E731
        assert strip(fast.json()) == strip(slow.json())


def test_the_service_health_names_what_it_serves(client: TestClient, live_recommender: dict) -> None:
    for path in ("/health", "/recommend/health"):
        body = client.get(path).json()
        assert body["status"] == "ok" and body["models"] == {"champion": live_recommender["versions"][0]}
        assert body["feature_version"] == live_recommender["features"].version and body["redis"] == "ok"


def test_openapi_documents_the_routes_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    route = spec["paths"]["/recommendations/{user_id}"]["get"]
    assert {p["name"] for p in route["parameters"]} == {"user_id", "k", "category"}
    assert "RecommendationsPublic" in spec["components"]["schemas"]


def test_events_change_what_is_recommended_at_once(client: TestClient, events: TestClient,
                                                   live_recommender: dict) -> None:
    user = known_user(live_recommender)
    before = [i["item_id"] for i in client.get(f"/recommendations/{user}").json()["items"]]
    clicked = before[0]
    batch = {"events": [{"event_id": "ev-1", "user_id": user, "item_id": clicked, "type": "click"},
                        {"event_id": "ev-2", "user_id": user, "item_id": "no-such-item", "type": "view"}]}
    assert events.post("/events", json=batch).json() == {"accepted": 2, "duplicates": 0, "unknown_items": 1}
    assert events.post("/events", json=batch).json()["duplicates"] == 2  # idempotent on event_id
    after = [i["item_id"] for i in client.get(f"/recommendations/{user}").json()["items"]]
    assert clicked not in after  # now a recent item: not recommended again


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"events": []}, "at least 1"),
        ({"events": [{"event_id": "e", "user_id": "u", "item_id": "i", "type": "like"}]}, "type"),
        ({"events": [{"event_id": "e", "user_id": "u 1", "item_id": "i", "type": "view"}]}, "user_id"),
        ({"events": [{"event_id": "e", "user_id": "u42:recent", "item_id": "i", "type": "view"}]}, "user_id"),
        ({"events": [{"event_id": "e:1", "user_id": "u", "item_id": "i", "type": "view"}]}, "event_id"),
        ({"events": [{"event_id": "e", "user_id": "u", "item_id": "i:1", "type": "view"}]}, "item_id"),
        ({"events": [{"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "request_id": "R:c"}]},
         "request_id"),
        ({"events": [{"event_id": "e", "user_id": "u", "item_id": "i", "type": "view"}] * 501}, "at most 500"),
    ],
)
def test_bad_events_get_a_422_naming_the_field(events: TestClient, body: dict, fragment: str) -> None:
    answer = events.post("/events", json=body)
    assert answer.status_code == 422 and fragment in answer.text


def test_an_oversized_event_batch_is_refused(events: TestClient) -> None:
    assert events.post("/events", content=b"{" + b" " * 300_000 + b"}").status_code == 413
