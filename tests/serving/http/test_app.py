"""The app's lifespan: what happens once the initial load has finished."""

import gc

import pytest
from fastapi.testclient import TestClient

from service.serving.http.app import create_app
from tests.serving.conftest import make_settings, wait_ready
from tests.serving.harness import wait_until


@pytest.mark.parametrize("freeze", [True, False])
def test_gc_freeze_after_the_initial_load_follows_the_setting(model_store, freeze) -> None:
    """Frozen objects are out of the full collections that set the p99 latency
    (docs/PERFORMANCE.md); the setting turns it off."""
    gc.unfreeze()
    settings = make_settings(model_store, models=["kws12-diffres"], gc_freeze=freeze)
    try:
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            loader = client.app.state.loader
            wait_until(loader.done, what="the load, and the freeze after it")
            loader.result()
            assert (gc.get_freeze_count() > 0) is freeze
    finally:
        gc.unfreeze()
