"""The serving contract: schema 1 manifests (the shipped models) read as schema 2, newer
schemas are refused, and the backend registry says which files a version holds."""

import json
import math
from pathlib import Path

import pytest

from service.manifest import (
    BACKENDS,
    LOG_MEL_RANGE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Manifest,
    verify_artifacts,
)

STORE = Path(__file__).resolve().parents[1] / "model_store"
SHIPPED = sorted(p for p in STORE.glob("*/*") if (p / MANIFEST_FILE).is_file())


def test_the_store_ships_models():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("directory", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_schema_1_manifests_read_as_the_current_schema(directory):
    raw = json.loads((directory / MANIFEST_FILE).read_text())
    manifest = Manifest.read(directory)
    assert manifest.schema_version == SCHEMA_VERSION
    assert verify_artifacts(directory, manifest) == []  # the files are the same files
    if raw["schema_version"] == 1:
        old = raw["frontend"]
        info = manifest.frontend
        assert (info.type, info.sample_rate, info.hop_length, info.n_mels) == (
            "LogMel", old["sample_rate"], old["hop_length"], old["n_mels"])
        assert info.silence == [math.log(old["log_floor"])] * old["n_mels"]
        assert info.value_range == LOG_MEL_RANGE and info.params == old
    assert manifest.backends == list(BACKENDS)


def test_a_newer_schema_is_refused(tmp_path):
    raw = json.loads((SHIPPED[0] / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(ValueError, match="schema 99 is newer than this code reads"):
        Manifest.read(tmp_path)


def test_written_manifests_read_back_unchanged(tmp_path):
    manifest = Manifest.read(SHIPPED[0])
    manifest.write(tmp_path)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["schema_version"] == 2
    assert Manifest.read(tmp_path) == manifest


def test_backends_are_those_whose_two_files_are_listed():
    manifest = Manifest.read(SHIPPED[0])
    onnx = BACKENDS["onnx"]
    only = manifest.model_copy(update={"artifacts": {
        name: a for name, a in manifest.artifacts.items() if name in onnx}})
    assert only.backends == ["onnx"]
    half = manifest.model_copy(update={"artifacts": {onnx.model: manifest.artifacts[onnx.model]}})
    assert half.backends == []
