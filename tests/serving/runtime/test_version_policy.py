"""Startup checks and the version policy (``version_policy``, ``default_model``):

* a bad ``version_policy`` is a settings error that says what is accepted;
* ``latest`` (the default) serves only the newest version that loads, ``all`` every version,
  ``specific:1,3`` those; GET /models lists the others as ``not_selected`` with the reason, and
  asking for one is a 404 that says why;
* the thread plan divides the cores among the served versions only;
* hot reload follows the policy: under ``latest`` a new newest version replaces the old;
* a ``default_model`` the store does not hold fails the startup (the app's lifespan, and
  ``python -m service serve`` with a non-zero exit) naming the model, the store and the models
  present; with polling on, the server starts but stays unready until the model appears.
"""

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings, VersionPolicy
from service.errors import ConfigError
from service.serving.http.app import create_app
from service.serving.metrics import Metrics
from service.serving.runtime.model_repository import ModelRepository
from service.serving.runtime.model_store import scan_store
from service.serving.runtime.version_plan import planned_versions
from service.serving.runtime.workers import plan_workers
from tests.serving.conftest import make_settings
from tests.serving.harness import asgi_client, drop_version, spec_body, store_copy

ROOT = Path(__file__).resolve().parents[3]
MODEL = "kws12-diffres"
ADMIN = {"authorization": "Bearer admin-secret"}


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def three_versions(model_store, tmp_path) -> Path:
    """A private store: kws12-diffres versions 1, 2, 3 (the same weights) and kws12-avgpool/1."""
    store = store_copy(model_store, tmp_path / "store", {MODEL: [1, 2], "kws12-avgpool": [1]})
    drop_version(store, MODEL, 1, 3)
    return store


def one_model(store, **overrides):
    return make_settings(store, **({"models": [MODEL]} | overrides))


async def listing(client) -> dict[int, dict]:
    return {m["version"]: m for m in (await client.get("/models")).json()["models"]
            if m["name"] == MODEL}


# ---- the setting ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["lastest", "specific", "specific:", "specific:0", "specific:a",
                                 "specific:1,,3", "specific:-1", "latest:2", "some", ""])
def test_bad_version_policy_is_a_clear_settings_error(bad, monkeypatch):
    with pytest.raises(ValidationError, match="version_policy must be 'latest', 'all' or "
                                              r"'specific:<version>\[,<version>...\]'"):
        Settings(version_policy=bad)
    monkeypatch.setenv("DIFFRES_VERSION_POLICY", bad)
    with pytest.raises(ValidationError, match=f"got {bad!r}"):
        Settings()


def test_version_policy_parses_from_env_flags_and_dumps_as_text(monkeypatch):
    from service.cli import build_parser
    from service.serving.http.serve_command import settings_from_args

    assert Settings().version_policy == VersionPolicy("latest")
    monkeypatch.setenv("DIFFRES_VERSION_POLICY", " Specific: 3, 1 ,3")
    s = Settings()
    assert s.version_policy == VersionPolicy("specific", (1, 3))
    assert s.masked()["version_policy"] == "specific:1,3"
    args = build_parser().parse_args(["serve", "--version-policy", "all"])
    assert settings_from_args(args).version_policy == VersionPolicy("all")


# ---- which versions serve ---------------------------------------------------------------------

def test_latest_serves_only_the_newest_version_and_lists_the_others_with_the_reason(
        three_versions):
    async def main():
        async with asgi_client(one_model(three_versions)) as (app, client):
            return (await listing(client), await client.post("/classify", json=spec_body()),
                    await client.post("/classify?version=1", json=spec_body()),
                    await client.post("/classify?version=9", json=spec_body()),
                    (await client.get(f"/models/{MODEL}")).json(),
                    (await client.get("/readyz")).status_code)

    models, default, old, unknown, detail, ready = run(main())
    assert {v: m["state"] for v, m in models.items()} == {1: "not_selected", 2: "not_selected",
                                                          3: "ready"}
    for v in (1, 2):
        assert models[v]["reason"] == "not selected by version_policy=latest (version 3 is served)"
        assert models[v]["workers"] == 0 and models[v]["labels"]  # listed, with its manifest
    assert models[3]["reason"] is None and models[3]["workers"] == 1
    assert default.status_code == 200 and default.json()["version"] == 3
    assert old.status_code == 404 and old.json()["error"]["code"] == "model_not_found"
    assert old.json()["error"]["message"] == (
        f"model {MODEL!r} version 1 is not served: not selected by version_policy=latest "
        "(version 3 is served); served: [3]")
    assert unknown.status_code == 404
    assert "versions in the store: [1, 2, 3], served: [3]" in unknown.json()["error"]["message"]
    assert detail["latest"] == 3 and ready == 200


def test_latest_falls_back_to_the_newest_version_that_loads(three_versions):
    with open(three_versions / MODEL / "3" / "model.onnx", "ab") as f:
        f.write(b"\0")

    async def main():
        async with asgi_client(one_model(three_versions)) as (app, client):
            return await listing(client), await client.post("/classify", json=spec_body())

    models, default = run(main())
    assert {v: m["state"] for v, m in models.items()} == {1: "not_selected", 2: "ready",
                                                          3: "failed"}
    assert "sha256" in models[3]["reason"]
    assert models[1]["reason"] == "not selected by version_policy=latest (version 2 is served)"
    assert default.status_code == 200 and default.json()["version"] == 2


def test_all_and_specific_serve_the_versions_they_name(three_versions):
    """``all`` is what the server did before there was a policy; ``specific`` is new."""
    async def serve(policy, versions):
        async with asgi_client(one_model(three_versions, version_policy=policy)) as (app, c):
            answers = {v: await c.post(f"/classify?version={v}", json=spec_body())
                       for v in versions}
            return await listing(c), answers, await c.post("/classify", json=spec_body())

    expected = {"all": {1: "ready", 2: "ready", 3: "ready"},
                "specific:1,3": {1: "ready", 2: "not_selected", 3: "ready"}}
    for policy, states in expected.items():
        models, answers, default = run(serve(policy, [*states, 9]))
        assert {v: m["state"] for v, m in models.items()} == states, policy
        for v, state in states.items():
            if state == "ready":
                assert answers[v].status_code == 200 and answers[v].json()["version"] == v
            else:
                assert models[v]["reason"] == f"not selected by version_policy={policy}"
                assert answers[v].status_code == 404
                assert f"not selected by version_policy={policy}" in \
                    answers[v].json()["error"]["message"]
        served = [v for v, state in states.items() if state == "ready"]
        assert answers[9].status_code == 404 and (
            f"versions in the store: [1, 2, 3], served: {served}"
            in answers[9].json()["error"]["message"]), policy
        assert default.json()["version"] == 3


# ---- threads ----------------------------------------------------------------------------------

def test_thread_plan_counts_served_versions_only(three_versions):
    entries = scan_store(three_versions, "onnx")  # kws12-avgpool/1, kws12-diffres/1..3
    count = {p: planned_versions(VersionPolicy.parse(p), entries)
             for p in ("latest", "all", "specific:1,3", "specific:2", "specific:7")}
    assert count == {"latest": 2, "all": 4, "specific:1,3": 3, "specific:2": 1, "specific:7": 0}
    with open(three_versions / MODEL / "3" / "model.onnx", "ab") as f:
        f.write(b"\0")  # a version that cannot load gets no share
    broken = scan_store(three_versions, "onnx")
    assert planned_versions(VersionPolicy.parse("all"), broken) == 3
    assert planned_versions(VersionPolicy.parse("latest"), broken) == 2
    # 9 cores, one left to the event loop: 8 threads shared by 2 served versions, not 4
    assert plan_workers(["cpu"], 1, 9, models=count["latest"])[0].threads == 4


def test_the_served_version_gets_the_cores_of_the_store_versions_it_does_not_share(
        three_versions, monkeypatch):
    monkeypatch.setattr("service.config.usable_cores", lambda: 4)
    settings = one_model(three_versions, intra_op_threads=0)

    async def main():
        repo = ModelRepository(settings, Metrics())
        await repo.start()
        try:
            return [w.spec.threads for w in repo.resolve(MODEL, None).workers]
        finally:
            await repo.stop()

    assert run(main()) == [3]  # (4 cores - 1) / 1 served version; not / 3 versions in the store


# ---- hot reload -------------------------------------------------------------------------------

def test_reload_under_latest_replaces_the_served_version_and_falls_back_when_it_goes(
        model_store, tmp_path):
    store = store_copy(model_store, tmp_path / "store", {MODEL: [1]})
    settings = one_model(store, admin_key="admin-secret")

    async def main():
        async with asgi_client(settings) as (app, client):
            drop_version(store, MODEL, 1, 2)
            added = (await client.post(f"/admin/models/{MODEL}/reload", headers=ADMIN)).json()
            after_add = (await listing(client),
                         await client.post("/classify?version=1", json=spec_body()),
                         await client.post("/classify", json=spec_body()))
            shutil.rmtree(store / MODEL / "2")
            removed = (await client.post(f"/admin/models/{MODEL}/reload", headers=ADMIN)).json()
            for _ in range(100):  # the replaced versions unload in the background
                models = await listing(client)
                if all(m["state"] != "unloading" for m in models.values()):
                    break
                await asyncio.sleep(0.05)
            return added, after_add, removed, models, await client.post("/classify",
                                                                         json=spec_body())

    added, (models, old, default), removed, final, last = run(main())
    assert added["models"][MODEL] == {"loaded": [2], "unloaded": [1], "failed": {},
                                      "unchanged": []}
    assert models[2]["state"] == "ready" and models[1]["state"] in ("not_selected", "unloading")
    assert old.status_code == 404 and "not selected by version_policy=latest" in \
        old.json()["error"]["message"]
    assert default.json()["version"] == 2
    assert removed["models"][MODEL] == {"loaded": [1], "unloaded": [2], "failed": {},
                                        "unchanged": []}
    assert {v: m["state"] for v, m in final.items()} == {1: "ready"}
    assert last.status_code == 200 and last.json()["version"] == 1


# ---- the default model ------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["absent", "left_out"])
def test_startup_fails_when_the_default_model_is_not_in_the_store(model_store, tmp_path, case,
                                                                  caplog):
    if case == "absent":
        store = store_copy(model_store, tmp_path / "store", {"kws12-avgpool": [1], "broken": [1]})
        settings = make_settings(store, models=[])
        expected = (f"default_model {MODEL!r} is not in the model store {store.resolve()}; "
                    "models present: broken, kws12-avgpool")
    else:
        store = model_store
        settings = make_settings(store, models=["kws12-avgpool"])
        expected = (f"default_model {MODEL!r} is left out by the models setting (kws12-avgpool);"
                    f" the model store {store.resolve()} holds: broken, kws12-avgpool, {MODEL}")
    app = create_app(settings)

    async def main():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigError) as error:
        run(main(), timeout=30)
    assert str(error.value).startswith(expected)
    assert "refusing to start: " + expected in caplog.text
    assert app.state.service.repository.models == {}  # nothing was loaded


def test_serve_exits_non_zero_naming_the_missing_default_model(model_store, tmp_path):
    store = store_copy(model_store, tmp_path / "store", {"kws12-avgpool": [1]})
    cmd = [sys.executable, "-m", "service", "serve", "--model-store", str(store),
           "--devices", "cpu", "--port", "0", "--default-model", "kws12-nope"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 3, done.stdout + done.stderr
    assert (f"default_model 'kws12-nope' is not in the model store {store.resolve()}; models "
            "present: kws12-avgpool") in done.stdout + done.stderr


def test_with_polling_the_server_stays_unready_until_the_default_model_appears(model_store,
                                                                               tmp_path):
    store = store_copy(model_store, tmp_path / "store", {"kws12-avgpool": [1]})
    settings = make_settings(store, models=[], poll_interval_s=0.2)

    async def main():
        async with asgi_client(settings) as (app, client):
            before = (await client.get("/readyz"),
                      await client.post("/classify", json=spec_body()),
                      await client.get("/v2/health/ready"))
            shutil.copytree(model_store / MODEL / "2", store / ".staging" / "2")
            os.rename(store / ".staging", store / MODEL)  # the model appears at once
            for _ in range(200):
                ready = await client.get("/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            return before, ready, await client.post("/classify", json=spec_body())

    (ready, classify, v2), after, answer = run(main())
    assert ready.status_code == 503
    message = ready.json()["error"]["message"]
    assert (f"default_model {MODEL!r} is not in the model store {store.resolve()}; models "
            "present: kws12-avgpool") in message
    assert classify.status_code == 404 and "it is the default model" in \
        classify.json()["error"]["message"]
    assert v2.status_code == 503
    assert after.status_code == 200
    assert answer.status_code == 200 and answer.json()["model"] == MODEL


def test_default_model_with_no_version_serving_keeps_the_server_unready(model_store, tmp_path):
    store = store_copy(model_store, tmp_path / "store", {MODEL: [1], "kws12-avgpool": [1]})
    with open(store / MODEL / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")

    async def main():
        async with asgi_client(make_settings(store)) as (app, client):
            return await client.get("/readyz")

    ready = run(main())
    assert ready.status_code == 503
    message = ready.json()["error"]["message"]
    assert message.startswith(f"not ready: default_model {MODEL!r} has no version serving; ")
    assert f"{MODEL}/1: failed" in message and "sha256" in message
