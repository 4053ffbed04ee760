"""Small model stores for tests, written by the real exporter (``export_model_dir``) from
small random models: the layout the server loads, without waiting for trained weights.

``build_serving_store(root)`` writes the layout the serving tests use:
  kws12-diffres/1  DiffRes, in_t_dim=101, n_mels=40, rate 0.5, 12 labels
  kws12-diffres/2  the same artifacts re-labelled as version 2 (latest)
  kws12-avgpool/1  AvgPool baseline (no compression outputs)
  broken/1         kws12-diffres/1 with a corrupted model.onnx (checksum mismatch)

``export_test_model`` writes one model version (what the deploy tests need). torch is
imported only when a model is exported.
"""

import shutil
from pathlib import Path

LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_",
          "_unknown_"]
IN_T_DIM, N_MELS, RATE, SAMPLE_RATE, HOP = 101, 40, 0.5, 16000, 160


def export_test_model(kind: str, out_dir: Path, name: str, seed: int) -> Path:
    """Export an untrained ``kind`` classifier (width 8) and its front end to ``out_dir``
    (``<root>/<name>/<version>``); returns ``out_dir``."""
    import torch

    from service.export import export_model_dir
    from service.frontend import LogMel
    from service.pipeline import AudioClassifier

    # Module- and session-scoped fixtures call this at a point that depends on the test
    # order: seed a forked RNG, so the tests that run after it see the global RNG as before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AudioClassifier.build(kind, IN_T_DIM, N_MELS, RATE, len(LABELS), width=8).eval()
    frontend = LogMel(sample_rate=SAMPLE_RATE, n_mels=N_MELS, hop_length=HOP)
    export_model_dir(model.compressor, model.classifier, frontend, out_dir, name=name,
                     version=int(out_dir.name), labels=LABELS,
                     metrics={"note": "untrained test model"}, training={"seed": seed})
    return out_dir


def relabel(src: Path, dst: Path, name: str, version: int) -> None:
    """Copy the model directory ``src`` to ``dst`` as ``name`` version ``version``."""
    from service.manifest import Manifest

    shutil.copytree(src, dst)
    manifest = Manifest.read(dst)
    manifest.name, manifest.version = name, version
    manifest.write(dst)


def build_serving_store(root: Path) -> Path:
    """The four-entry store described in the module docstring, under ``root``."""
    export_test_model("diffres", root / "kws12-diffres" / "1", "kws12-diffres", seed=0)
    relabel(root / "kws12-diffres" / "1", root / "kws12-diffres" / "2", "kws12-diffres", 2)
    export_test_model("avgpool", root / "kws12-avgpool" / "1", "kws12-avgpool", seed=1)
    relabel(root / "kws12-diffres" / "1", root / "broken" / "1", "broken", 1)
    with open(root / "broken" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")
    return root
