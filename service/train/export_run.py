"""Export a finished run's best checkpoint to the model store, and prove the export agrees.

    python -m service.train.export_run --run runs/X --name kws12-diffres --version 1 \
        --store model_store [--cross-engine-from runs/TWIN]

``export_model_dir`` checks the files numerically on noise; this adds the check that matters
to users: on every clip of the TEST split, starting from the raw waveform, the exported
front end + model (ONNX in onnxruntime, and TorchScript) give the same top-1 class as eager
PyTorch. The version is exported beside the store's versions under a hidden name and only
renamed into place when both formats agree on 100% of the clips.

A run trained on every engine family has no unheard engine left to test on. Its manifest
takes the cross-engine figures of a twin (``--cross-engine-from``): a finished run of the same
configuration on a dataset that held one family out, which training never heard; the
manifest names the twin and the family.
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from service.export import (
    ExportCheckError,
    Runner,
    export_model_dir,
    onnx_runner,
    torchscript_runner,
)
from service.manifest import BACKENDS, Manifest
from service.train import checkpoint
from service.train.config import PLACE_AND_SPEED_FIELDS, TrainConfig
from service.train.data import HELD_OUT_SPLITS, load_split, read_recipe
from service.train.loop import predict
from service.train.model import build_frontend, build_model
from service.train.report import RESULT_FILE, read_json

METRIC_KEYS = ("test_acc", "test_loss", "val_acc", "val_loss", "best_epoch",
               "frames_kept_fraction", "classifier_mflops", "cpu_ms_per_clip_b1",
               "cpu_ms_per_clip_b64", "n_params")


class AgreementError(RuntimeError):
    """An exported format's top-1 differs from eager PyTorch on some test clip."""


class TwinError(ValueError):
    """``--cross-engine-from`` names a run that cannot stand in for this one."""


def exported_top1(frontend: Runner, model: Runner, waves: Tensor, batch_size: int) -> Tensor:
    """Top-1 class [N] of waveform -> exported front end -> exported model (probabilities)."""
    tops = [model(frontend(chunk)[0])[0].argmax(dim=1) for chunk in waves.split(batch_size)]
    return torch.cat(tops)


def agreement(reference: Tensor, candidate: Tensor) -> float:
    """Fraction of items with the same class."""
    return float((reference == candidate).float().mean())


def format_runners(directory: Path) -> dict[str, tuple[Runner, Runner]]:
    """(front end, model) runners of each exported format in a model directory."""
    runners = {"onnx": onnx_runner, "torchscript": torchscript_runner}
    return {fmt: (runners[fmt](directory / files.frontend), runners[fmt](directory / files.model))
            for fmt, files in BACKENDS.items()}


def check_agreement(runners: dict[str, tuple[Runner, Runner]], eager_top1: Tensor,
                    waves: Tensor, batch_size: int) -> dict[str, dict[str, Any]]:
    """Top-1 agreement of each format with eager; AgreementError below 100%."""
    report = {}
    for fmt, (frontend, model) in runners.items():
        top1 = exported_top1(frontend, model, waves, batch_size)
        mismatched = int((top1 != eager_top1).sum())
        report[fmt] = {"agreement": agreement(eager_top1, top1), "mismatched": mismatched,
                       "clips": len(waves)}
        print(f"{fmt}: top-1 agrees with eager on {len(waves) - mismatched}/{len(waves)} "
              f"test clips ({100 * report[fmt]['agreement']:.2f}%)")
    failed = [fmt for fmt, r in report.items() if r["mismatched"]]
    if failed:
        raise AgreementError(f"exported top-1 differs from eager for {failed}: {report}")
    return report


def finished(run: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """A finished run's configuration and result."""
    if not (run / RESULT_FILE).is_file():
        raise FileNotFoundError(f"{run / RESULT_FILE} missing: the run has not finished")
    return TrainConfig.load(run), read_json(run / RESULT_FILE)


def twin_cross_metrics(cfg: TrainConfig, result: dict[str, Any], twin: Path) -> dict[str, Any]:
    """The engine-disjoint figures of ``twin`` for a run that has none of its own; refused
    unless the twin learnt the same way (configurations equal but for place and speed)."""
    if "test_cross_acc" in result:
        raise TwinError("the run has its own cross-engine test; it needs no twin")
    twin_cfg, twin_result = finished(Path(twin))
    ours, theirs = cfg.to_dict(), twin_cfg.to_dict()
    differ = sorted(k for k in ours if ours[k] != theirs.get(k)
                    and k not in PLACE_AND_SPEED_FIELDS)
    if differ:
        raise TwinError(f"{twin} is no twin: its configuration differs in {differ}")
    if "test_cross_acc" not in twin_result:
        raise TwinError(f"{twin} has no cross-engine test (test_cross_acc)")
    held_out = read_recipe(Path(twin_cfg.data)).get("params", {}).get("held_out")
    return {"test_cross_acc": twin_result["test_cross_acc"],
            "test_cross_loss": twin_result["test_cross_loss"],
            "test_cross_from": {"run": str(twin), "data": twin_cfg.data,
                                "held_out": held_out,
                                "test_acc": twin_result["test_acc"]}}


def export_run(run: Path, store: Path, name: str, version: int, batch_size: int = 64,
               cross_engine_from: Path | None = None) -> Manifest:
    """Export ``run``'s best epoch as ``store/name/version``; see the module docstring."""
    run = Path(run)
    cfg, result = finished(run)
    metrics = manifest_metrics(result)
    if cross_engine_from is not None:
        metrics |= twin_cross_metrics(cfg, result, cross_engine_from)
    labels = result["labels"]
    model = build_model(cfg, len(labels))
    model.load_state_dict(checkpoint.load(run / checkpoint.BEST_FILE)["model"])
    model.eval()
    frontend = build_frontend(cfg).eval()
    final = Path(store) / name / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; model versions are immutable")
    staging = final.with_name(f".{version}.verifying")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = export_model_dir(model.compressor, model.classifier, frontend, staging,
                                    name, version, labels,
                                    metrics=metrics,
                                    dataset=result["dataset"],
                                    training=_training(cfg, result, run))
        test = load_split(Path(cfg.data), "test", labels)
        eager = predict(model, frontend, test, batch_size, torch.device("cpu")).argmax(1)
        report = check_agreement(format_runners(staging), eager, test.waves, batch_size)
        manifest.metrics["test_top1_agreement"] = report
        manifest.write(staging)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"exported {run} to {final}")
    return manifest


def manifest_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What the manifest tells of the run: ``METRIC_KEYS``, and the accuracy and loss on each
    held-out split it was tested on (``test_cross``: the voices training never heard)."""
    held_out = [f"{split}_{what}" for split in HELD_OUT_SPLITS for what in ("acc", "loss")]
    return {k: result[k] for k in METRIC_KEYS} | {k: result[k] for k in held_out if k in result}


def _training(cfg: TrainConfig, result: dict[str, Any], run: Path) -> dict[str, Any]:
    return {**cfg.to_dict(), "run": str(run), "best_epoch": result["best_epoch"],
            "epochs_run": result["epochs"], "seconds_per_epoch": result["seconds_per_epoch"],
            "trained_on": result["device"], "torch": result["torch"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.train.export_run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run directory")
    parser.add_argument("--name", required=True, help="model name in the store")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cross-engine-from", type=Path, metavar="TWIN", help="for a run "
                        "trained on every engine family: a finished run of the same "
                        "configuration that held one out, whose cross-engine figures the "
                        "manifest takes")
    args = parser.parse_args(argv)
    try:
        export_run(args.run, args.store, args.name, args.version, args.batch_size,
                   args.cross_engine_from)
    except (AgreementError, ExportCheckError, FileExistsError, FileNotFoundError,
            TwinError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
