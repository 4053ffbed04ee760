"""A LogMel model's front end runs in numpy where it agrees with the exported file, gives the
same answers, and stays the file where it does not."""

import asyncio
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.manifest import Manifest
from service.serving.dataplane.inference_service import InferenceService, Payload
from service.serving.metrics import Metrics
from service.serving.runtime.model_repository import ModelRepository
from tests.serving.conftest import make_settings, sine
from tests.serving.harness import wav_bytes


async def served(store, **overrides) -> tuple[str, dict]:
    """(who computes the front end, /classify of a 1 s tone) for kws12-diffres."""
    settings = make_settings(store, models=["kws12-diffres"], **overrides)
    metrics = Metrics()
    repo = ModelRepository(settings, metrics)
    service = InferenceService(settings, repo, metrics)
    await repo.start()
    try:
        runs_on = service.model("kws12-diffres")["versions"][-1]["input"]["frontend_runs_on"]
        result = await service.classify(None, None, Payload("audio", wav_bytes(sine(1.0))))
        return runs_on, result
    finally:
        await repo.stop()
        service.close()


def test_numpy_front_end_serves_the_answers_of_the_file(model_store):
    native, native_result = asyncio.run(served(model_store))
    exported, exported_result = asyncio.run(served(model_store, native_frontend=False))
    assert (native, exported) == ("native", "onnx")
    assert native_result["labels"] == exported_result["labels"]
    np.testing.assert_allclose(list(native_result["probabilities"].values()),
                               list(exported_result["probabilities"].values()), rtol=0, atol=1e-4)
    np.testing.assert_allclose(native_result["frame_scores"], exported_result["frame_scores"],
                               rtol=0, atol=1e-4)


def store_with_params(model_store, tmp_path, change) -> Path:
    """A copy of kws12-diffres/1 whose manifest's front-end params ``change`` edited."""
    store = tmp_path / "store"
    shutil.copytree(model_store / "kws12-diffres" / "1", store / "kws12-diffres" / "1")
    manifest = Manifest.read(store / "kws12-diffres" / "1")
    change(manifest.frontend.params)
    manifest.write(store / "kws12-diffres" / "1")
    return store


def test_a_manifest_that_misdescribes_its_front_end_keeps_the_file(model_store, tmp_path,
                                                                   caplog):
    store = store_with_params(model_store, tmp_path,
                              lambda params: params.update(f_max=params["f_max"] / 2))
    with caplog.at_level(logging.WARNING):
        runs_on, _ = asyncio.run(served(store))
    assert runs_on == "onnx"
    assert "the exported file computes it" in caplog.text


def test_a_manifest_without_front_end_settings_keeps_the_file(model_store, tmp_path):
    runs_on, result = asyncio.run(served(store_with_params(model_store, tmp_path, dict.clear)))
    assert runs_on == "onnx" and result["top"]


@pytest.mark.parametrize("native_frontend", [True, False])
def test_torchscript_models_get_the_same_choice(model_store, native_frontend):
    runs_on, _ = asyncio.run(served(model_store, backend="torchscript",
                                    native_frontend=native_frontend))
    assert runs_on == ("native" if native_frontend else "torchscript")


def test_a_check_that_cannot_run_keeps_the_file(model_store, monkeypatch):
    def unreadable(*args):
        raise OSError("check clip missing")

    monkeypatch.setattr("service.serving.runtime.model_repository.largest_difference",
                        unreadable)
    runs_on, result = asyncio.run(served(model_store))
    assert runs_on == "onnx" and result["top"]
