"""Faults, each through HTTP against the app in this process (``harness.asgi_client``), with
real exported models wrapped by the test-only ``FaultyBackend``:

* an inference error fails only its own batch (500 ``inference_failed``), the worker serves on;
* a hung worker is caught by the watchdog and replaced; its requests end well before their
  deadline, the requests queued behind it are served by the replacement;
* a worker that dies (every later batch fails) is found by its probe and replaced;
* corrupt manifests and artifacts leave only their model unserved, with the reason;
* hot reload under load: a new version goes live with zero failed requests; a removed
  version unloads only after its in-flight request finished; polling finds new versions.

Each step waits for the event it needs (a poisoned batch running, answers from a version);
the timeouts only stop a hang.
"""

import asyncio
import shutil

import pytest

from service.manifest import Manifest, describe_artifact
from tests.serving.conftest import make_settings
from tests.serving.harness import (
    Faults,
    asgi_client,
    drop_version,
    eventually,
    install_faults,
    metric_samples,
    spec_body,
    store_copy,
)

ADMIN = {"authorization": "Bearer admin-secret"}


def run(coro, timeout=300):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def one_model(store, **overrides):
    base = {"models": ["kws12-diffres"], "max_batch_size": 4, "max_queue_delay_ms": 30.0,
            "request_timeout_s": 10.0}
    return make_settings(store, **(base | overrides))


def test_inference_error_fails_only_its_batch_and_the_worker_serves_on(model_store,
                                                                       monkeypatch):
    faults = Faults(mode="raise")
    install_faults(monkeypatch, faults)

    async def main():
        async with asgi_client(one_model(model_store)) as (app, client):
            faults.batches.clear()
            created = faults.created
            answers = await asyncio.gather(*(client.post(
                "/classify", json=spec_body(ident=i, poison=i == 5)) for i in range(12)))
            after = await client.post("/classify", json=spec_body(ident=-1))
            return answers, after, [b for b in faults.batches], faults.created - created

    answers, after, batches, new_backends = run(main())
    failed = {i for i, r in enumerate(answers) if r.status_code != 200}
    poisoned_batch = next(b for b in batches if 5.0 in b)
    assert failed == {int(x) for x in poisoned_batch} and len(failed) < 12
    for i in failed:
        assert answers[i].status_code == 500
        assert answers[i].json()["error"]["code"] == "inference_failed"
    assert after.status_code == 200 and new_backends == 0  # same worker, still serving


def test_hung_worker_is_replaced_and_its_requests_end_before_their_deadline(model_store,
                                                                            monkeypatch):
    """The hung request ends with the watchdog's 500, not the deadline's 504: it ended
    before its deadline, which is far away (60 s) so that no slow machine reaches it."""
    faults = Faults(mode="hang")
    install_faults(monkeypatch, faults)

    async def main():
        settings = one_model(model_store, batch_timeout_s=2.0, request_timeout_s=60.0,
                             max_queue_delay_ms=1.0)
        async with asgi_client(settings) as (app, client):
            created = faults.created
            hung = asyncio.create_task(client.post("/classify", json=spec_body(poison=True)))
            await eventually(faults.poisoned.is_set)  # the poisoned batch holds the only worker
            queued = [client.post("/classify", json=spec_body(ident=i)) for i in range(6)]
            answers = await asyncio.gather(hung, *queued)
            metrics = (await client.get("/metrics")).text
            faults.release.set()  # let the abandoned thread finish
            return answers, faults.created - created, metrics

    answers, new_backends, metrics = run(main())
    assert answers[0].status_code == 500
    assert answers[0].json()["error"]["code"] == "inference_failed"
    assert "batch_timeout_s" in answers[0].json()["error"]["message"]
    assert [r.status_code for r in answers[1:]] == [200] * 6  # served by the replacement
    assert new_backends == 1
    assert metric_samples(metrics, "diffres_worker_replacements_total")[0][1] == 1


def test_dead_worker_fails_its_probe_and_is_replaced(model_store, monkeypatch):
    faults = Faults(mode="die")
    install_faults(monkeypatch, faults)

    async def main():
        async with asgi_client(one_model(model_store, max_queue_delay_ms=1.0)) as (app, client):
            created = faults.created
            dying = await client.post("/classify", json=spec_body(poison=True))
            later = [await client.post("/classify", json=spec_body(ident=i)) for i in range(3)]
            return dying, later, faults.created - created

    dying, later, new_backends = run(main())
    assert dying.status_code == 500 and dying.json()["error"]["code"] == "inference_failed"
    assert [r.status_code for r in later] == [200] * 3 and new_backends == 1


def test_corrupt_manifests_and_artifacts_leave_only_their_model_unserved(model_store, tmp_path,
                                                                         monkeypatch):
    from service.serving.runtime import model_repository as repository

    store = store_copy(model_store, tmp_path / "store", {"kws12-diffres": [2]})
    for name in ("badjson", "nomanifest", "garbage", "tampered"):
        shutil.copytree(model_store / "kws12-diffres" / "1", store / name / "1")
        manifest = Manifest.read(store / name / "1")
        manifest.name = name
        manifest.write(store / name / "1")
    (store / "badjson" / "1" / "manifest.json").write_text('{"name": "badjson", "vers')
    (store / "nomanifest" / "1" / "manifest.json").unlink()
    garbage = store / "garbage" / "1"  # checksum matches, content is not ONNX
    (garbage / "model.onnx").write_bytes(b"\x08\x07 this is not a protobuf model" * 50)
    manifest = Manifest.read(garbage)
    manifest.artifacts["model.onnx"] = describe_artifact(garbage / "model.onnx")
    manifest.write(garbage)
    real_scan = repository.scan_store

    def scan_then_tamper(*args, **kwargs):  # the file changes after its checksum was read
        entries = real_scan(*args, **kwargs)
        with open(store / "tampered" / "1" / "model.onnx", "ab") as f:
            f.write(b"\0")
        return entries

    monkeypatch.setattr(repository, "scan_store", scan_then_tamper)
    names = ["kws12-diffres", "badjson", "nomanifest", "garbage", "tampered"]

    async def main():
        async with asgi_client(make_settings(store, models=names)) as (app, client):
            models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
            answers = {n: await client.post(f"/classify?model={n}", json=spec_body())
                       for n in names}
            return models, answers, await client.get("/readyz")

    models, answers, ready = run(main())
    reasons = {"badjson": "manifest.json: invalid", "nomanifest": "manifest.json: missing",
               "garbage": "load failed", "tampered": "does not match the manifest"}
    for name, reason in reasons.items():
        assert models[name]["state"] == "failed" and reason in models[name]["reason"], name
        assert answers[name].status_code == 503, name
        assert reason in answers[name].json()["error"]["message"]
    assert answers["kws12-diffres"].status_code == 200
    assert ready.status_code == 503 and "tampered/1: failed" in ready.json()["error"]["message"]


async def _load(client, stop, answers, phase):
    """Four closed-loop clients until ``stop``; each answer is recorded as (status, version
    or error, ``phase["now"]`` when its request was sent)."""

    async def one(k):
        i = 0
        while not stop.is_set():
            sent_in = phase["now"]
            r = await client.post("/classify", json=spec_body(ident=-(k * 100 + i % 100)))
            body = r.json()
            answers.append((r.status_code, body.get("version", body.get("error")), sent_in))
            i += 1

    await asyncio.gather(*(one(k) for k in range(4)))


def test_hot_reload_under_load_with_zero_failed_requests(model_store, tmp_path):
    store = store_copy(model_store, tmp_path / "store", {"kws12-diffres": [1]})
    settings = one_model(store, admin_key="admin-secret", max_queue_delay_ms=2.0)

    def sent_in(answers, phase):
        return [a for a in answers if a[2] == phase]

    async def main():
        async with asgi_client(settings) as (app, client):
            stop, answers, phase = asyncio.Event(), [], {"now": "v1"}
            load = asyncio.create_task(_load(client, stop, answers, phase))
            await eventually(lambda: len(answers) >= 8)  # under load before the reload
            drop_version(store, "kws12-diffres", 1, 2)
            added = await client.post("/admin/models/kws12-diffres/reload", headers=ADMIN)
            phase["now"] = "v2"
            await eventually(lambda: len(sent_in(answers, "v2")) >= 8)  # v2 serves the load
            shutil.rmtree(store / "kws12-diffres" / "2")
            removed = await client.post("/admin/models/kws12-diffres/reload", headers=ADMIN)
            phase["now"] = "v2 removed"
            await eventually(lambda: len(sent_in(answers, "v2 removed")) >= 8)
            stop.set()
            await load
            models = (await client.get("/models/kws12-diffres")).json()
            return added.json(), removed.json(), answers, models

    added, removed, answers, models = run(main())
    assert added["models"]["kws12-diffres"]["loaded"] == [2]
    assert removed["models"]["kws12-diffres"]["unloaded"] == [2]
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed  # zero failed requests throughout both reloads
    # (requests sent before a reload answered may have resolved either version)
    assert {v for _, v, _ in sent_in(answers, "v2")} == {2}  # live once the reload answered
    assert {v for _, v, _ in sent_in(answers, "v2 removed")} == {1}  # and away again
    assert models["latest"] == 1


def test_removed_version_unloads_only_after_its_inflight_request(model_store, tmp_path,
                                                                  monkeypatch):
    faults = Faults(mode="block")
    install_faults(monkeypatch, faults)
    store = store_copy(model_store, tmp_path / "store", {"kws12-diffres": [1, 2]})
    settings = one_model(store, admin_key="admin-secret", max_queue_delay_ms=1.0)

    async def states(client):
        return {m["version"]: m["state"] for m in (await client.get("/models")).json()["models"]}

    async def main():
        async with asgi_client(settings) as (app, client):
            slow = asyncio.create_task(client.post("/classify?version=2",
                                                   json=spec_body(poison=True)))
            await eventually(faults.poisoned.is_set)  # its batch is running in v2's worker
            shutil.rmtree(store / "kws12-diffres" / "2")
            reload = await client.post("/admin/models/kws12-diffres/reload", headers=ADMIN)
            during = await states(client)
            explicit = await client.post("/classify?version=2", json=spec_body())
            default = await client.post("/classify", json=spec_body())
            await asyncio.sleep(0.3)  # room to unload too early (the request holds v2 anyway)
            still = (await states(client), slow.done())
            faults.release.set()
            answer = await slow

            async def unloaded():
                return 2 not in await states(client)

            await eventually(unloaded)
            info = metric_samples((await client.get("/metrics")).text, "diffres_model_info")
            return (reload.json(), during, explicit, default, still, answer,
                    await states(client), info)

    reload, during, explicit, default, still, answer, after, info = run(main())
    assert reload["models"]["kws12-diffres"]["unloaded"] == [2]
    assert during == {1: "ready", 2: "unloading"}
    assert explicit.status_code == 404 and default.json()["version"] == 1
    assert still == ({1: "ready", 2: "unloading"}, False)  # waits for the request
    assert answer.status_code == 200 and answer.json()["version"] == 2
    assert after == {1: "ready"}
    assert [labels for labels, _ in info if 'version="2"' in labels] == []


def test_polling_serves_a_new_version_and_skips_a_broken_one(model_store, tmp_path):
    store = store_copy(model_store, tmp_path / "store", {"kws12-diffres": [1]})
    settings = one_model(store, poll_interval_s=0.2)

    async def main():
        async with asgi_client(settings) as (app, client):
            drop_version(store, "kws12-diffres", 1, 2)
            # corrupted before it is renamed into place: a scan racing with the corruption
            # would otherwise load it intact, and serve it as the latest
            drop_version(store, "kws12-diffres", 1, 3, corrupt=True)
            answers = []

            async def serves_v2():
                answers.append(await client.post("/classify", json=spec_body()))
                return answers[-1].json().get("version") == 2

            await eventually(serves_v2, poll_s=0.05)
            models = {m["version"]: m for m in (await client.get("/models")).json()["models"]}
            return answers[-1], models, (await client.get("/readyz")).status_code

    r, models, ready = run(main())
    assert r.status_code == 200 and r.json()["version"] == 2
    assert models[3]["state"] == "failed" and "sha256" in models[3]["reason"]
    assert ready == 200  # every model still has a version serving


def test_admin_reload_of_unknown_or_traversing_names_is_404(model_store, tmp_path):
    """Names are compared with the store's listing, never joined to a path. (A literal
    ``..`` is normalised away by clients; the raw-socket case is in test_security.py.)"""
    store = store_copy(model_store, tmp_path / "store", {"kws12-diffres": [1]})
    settings = one_model(store, admin_key="admin-secret")

    async def main():
        async with asgi_client(settings) as (app, client):
            refused = [await client.post(f"/admin/models/{name}/reload", headers=ADMIN)
                       for name in ("nope", "%2e%2e", ".%2e", "kws12-diffres%2F..%2F..",
                                    "..%2F..%2Fetc%2Fpasswd", "%2Fetc")]
            broken = drop_version(store, "kws12-diffres", 1, 2)
            (broken / "manifest.json").write_text("{")
            return refused, await client.post("/admin/reload", headers=ADMIN)

    refused, reloaded = run(main())
    for r in refused:
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] in ("model_not_found", "not_found")
    assert reloaded.status_code == 200, reloaded.text
    report = reloaded.json()["models"]["kws12-diffres"]
    assert report["unchanged"] == [1] and "manifest.json: invalid" in report["failed"]["2"]


@pytest.fixture(autouse=True)
def _no_leftover_faults(monkeypatch):
    yield
    monkeypatch.undo()
