"""Avatar jobs under concurrent clients, on the gated app (two ingress replicas, stages that wait
at a gate the test opens): one job per photo, the pending bound, heartbeats, stage timeouts that
cancel the stage, bounded stage queues, and tenants; plus the store's lease without Ray."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import requests

from tests.serve.photos import photo

#: Replicas of the gated app's ingress, and the calls its stage takes at once (tests/serve/conftest.py).
REPLICAS = 2
GATE_ONGOING = 2


def _status(gated, avatar: str, key: dict | None = None) -> requests.Response:
    return requests.get(f"{gated.base}/v1/avatars/{avatar}", headers=key or gated.auth, timeout=30)


def _wait_final(gated, avatar: str, key: dict | None = None, limit_s: float = 60) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = _status(gated, avatar, key)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("ok", "rejected", "failed"):
            return r.json()
        time.sleep(0.2)
    pytest.fail(f"avatar {avatar} did not finish within {limit_s} s")


def _wait_entered(gated, count: int, limit_s: float = 30) -> list[str]:
    ray.get(gated.gate.wait_for.remote("entered", count, limit_s), timeout=limit_s + 30)
    return gated.counts()["entered"]


def _post_many(gated, bodies: list[bytes], key: dict | None = None) -> list[requests.Response]:
    def post(data: bytes) -> requests.Response:
        return requests.post(f"{gated.base}/v1/avatars", files={"image": ("p.png", data, "image/png")}, headers=key or gated.auth, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_concurrent_posts_of_one_photo_start_one_job(gated):
    from serve.store import tenant_id
    from tests.serve.conftest import KEY

    ray.get(gated.gate.hold.remote(), timeout=30)
    answers = _post_many(gated, [photo(10)] * 10)
    assert [r.status_code for r in answers] == [202] * 10, [r.text for r in answers]
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1 and {r.json()["status"] for r in answers} <= {"queued", "running"}
    (avatar,) = ids
    assert _wait_entered(gated, 1) == [avatar]
    folder = gated.store / "tenants" / tenant_id(KEY) / "avatars" / avatar
    assert sorted(p.name for p in folder.glob("lease-*.json")) == ["lease-1.json"]  # one attempt, one replica
    ray.get(gated.gate.release.remote(), timeout=30)
    assert _wait_final(gated, avatar)["status"] == "rejected"
    assert gated.counts()["entered"] == [avatar]  # the stage saw the photo once, ever
    again = _post_many(gated, [photo(10)])[0]
    assert again.status_code == 200 and again.json()["status"] == "rejected"


def test_max_pending_avatars_holds_under_a_burst(gated):
    ray.get(gated.gate.hold.remote(), timeout=30)
    burst = 12
    answers = _post_many(gated, [photo(20 + i) for i in range(burst)])
    codes = [r.status_code for r in answers]
    assert set(codes) <= {202, 503}, [r.text for r in answers]
    accepted = [r.json()["id"] for r in answers if r.status_code == 202]
    bound = REPLICAS * gated.settings.max_pending_avatars
    assert 1 <= len(accepted) <= bound, codes
    assert all(r.json()["detail"]["reason"] == "busy" and r.headers["retry-after"] for r in answers if r.status_code == 503)
    # The accepted jobs (and only they) reach the stage, as many at once as it takes (2).
    entered = _wait_entered(gated, min(len(accepted), GATE_ONGOING))
    assert set(entered) <= set(accepted) and len(entered) == len(set(entered))
    ray.get(gated.gate.release.remote(), timeout=30)
    for avatar in accepted:
        assert _wait_final(gated, avatar)["status"] == "rejected"
    assert sorted(gated.counts()["entered"]) == sorted(accepted)


def test_a_long_job_heartbeats_and_is_never_read_as_interrupted(gated):
    from serve.app import STALE_HEARTBEATS

    ray.get(gated.gate.hold.remote(), timeout=30)
    (answer,) = _post_many(gated, [photo(40)])
    assert answer.status_code == 202, answer.text
    avatar = answer.json()["id"]
    _wait_entered(gated, 1)
    (stored,) = gated.store.glob(f"**/{avatar}/status.json")
    first = json.loads(stored.read_text())["updated_at"]
    beat = gated.settings.heartbeat_s
    stale_after = STALE_HEARTBEATS * beat
    # Held past the point where a silent job reads as interrupted; sampled from both replicas.
    started = time.monotonic()
    while time.monotonic() - started < stale_after + 2 * beat:
        status = _status(gated, avatar).json()
        assert status["status"] == "running", status
        age = time.time() - json.loads(stored.read_text())["updated_at"]
        assert age < 0.75 * stale_after, f"status.json last updated {age:.2f} s ago (heartbeat_s={beat})"
        time.sleep(beat / 2)
    assert json.loads(stored.read_text())["updated_at"] >= first + 2 * beat
    ray.get(gated.gate.release.remote(), timeout=30)
    assert _wait_final(gated, avatar)["status"] == "rejected"


def test_stage_timeout_cancels_the_stage_and_a_full_queue_is_503(gated):
    ray.get(gated.gate.hold.remote(), timeout=30)

    def track(_):
        return requests.post(f"{gated.base}/v1/track", files={"image": photo(50)}, headers=gated.auth, timeout=60)

    burst = 12  # the gate stage holds 2 ongoing + 2 queued per ingress replica
    with ThreadPoolExecutor(burst) as pool:
        answers = list(pool.map(track, range(burst)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {503, 504} and 503 in codes and 504 in codes, [r.text for r in answers]
    for r in answers:
        assert r.json()["detail"]["reason"] == {503: "busy", 504: "timeout"}[r.status_code], r.text
    # Every call that reached the stage was cancelled there when its request timed out.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = gated.counts()
        if counts["entered"] and len(counts["cancelled"]) == len(counts["entered"]):
            break
        ray.get(gated.gate.wait_for.remote("cancelled", len(counts["entered"]), 1.0), timeout=30)
    counts = gated.counts()
    assert counts["entered"] and sorted(counts["cancelled"]) == sorted(counts["entered"]), counts
    assert len(counts["entered"]) <= burst - codes.count(503)


def test_tenants_neither_read_nor_detect_each_others_avatars(gated):
    from serve.store import tenant_id
    from tests.serve.conftest import KEY, KEY_B, PREFIX

    data = photo(60)
    (mine,) = _post_many(gated, [data])
    assert mine.status_code == 202, mine.text
    avatar = mine.json()["id"]
    assert _wait_final(gated, avatar)["status"] == "rejected"
    # B cannot read A's avatar, its files or animate it: it does not exist for B.
    for method, path in (("get", ""), ("get", "/files/status.json"), ("post", "/animate")):
        r = requests.request(method, f"{gated.base}/v1/avatars/{avatar}{path}", headers=gated.auth_b, timeout=30)
        assert r.status_code == 404 and r.json()["detail"]["reason"] == "unknown_avatar", (path, r.text)
    # B posting the same photo starts B's own job: not "already done" from A's data.
    (theirs,) = _post_many(gated, [data], key=gated.auth_b)
    assert theirs.status_code == 202 and theirs.json()["status"] in ("queued", "running"), theirs.text
    assert theirs.json()["id"] == avatar  # the content hash, scoped by tenant
    assert _wait_final(gated, avatar, key=gated.auth_b)["status"] == "rejected"
    assert gated.counts()["entered"] == [avatar, avatar]  # one job per tenant
    for key in (KEY, KEY_B):
        assert (gated.store / "tenants" / tenant_id(key) / "avatars" / avatar / "status.json").is_file()
    assert tenant_id(KEY) != tenant_id(KEY_B) and KEY not in tenant_id(KEY)
    assert mine.json()["links"]["self"] == f"{PREFIX}/v1/avatars/{avatar}"  # links keep the route prefix


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_lease_lets_one_replica_run_an_attempt(tmp_path, request, where):
    """On a local disk the lease is an O_EXCL create; on S3 a conditional write (If-None-Match),
    through a real S3 endpoint (moto's server on loopback)."""
    from serve.store import AvatarStore, tenant_id

    root = str(tmp_path)
    if where == "s3":
        import boto3

        boto3.client("s3", endpoint_url=request.getfixturevalue("s3_endpoint")).create_bucket(Bucket="leases")
        root = "s3://leases/api"
    a, b = AvatarStore(root), AvatarStore(root)
    tenant, avatar = tenant_id("k"), "0123456789abcdef0123"
    assert a.take_lease(tenant, avatar, 1, "replica-a") is True
    assert b.take_lease(tenant, avatar, 1, "replica-b") is False
    assert a.lease_superseded(tenant, avatar, 1) is False
    assert b.take_lease(tenant, avatar, 2, "replica-b") is True  # a later attempt (after a stale heartbeat)
    assert a.lease_superseded(tenant, avatar, 1) is True
    with pytest.raises(ValueError, match="`attempt` must be at least 1, got 0"):
        a.take_lease(tenant, avatar, 0, "replica-a")
    with pytest.raises(ValueError, match="`tenant` must match"):
        a.folder("../x", avatar)
