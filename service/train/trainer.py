"""A whole run: train, keep the best epoch by VALIDATION accuracy, then test it once.

Files in the run directory: config.json, checkpoint.pt (last epoch, for resuming),
best.pt (best validation epoch), metrics.csv, curves.png and, when done, result.json.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from service.config import usable_cores
from service.train import checkpoint
from service.train.config import (
    PLACE_AND_SPEED_FIELDS,
    TrainConfig,
    resolve_device,
    with_defaults,
)
from service.train.cost import model_costs
from service.train.data import (
    HELD_OUT_SPLITS,
    Split,
    dataset_summary,
    load_dataset,
    n_train_batches,
    with_features,
)
from service.train.loop import Augment, evaluate, train_epoch
from service.train.model import build_frontend, build_model, log_floor_value
from service.train.optim import build_optimizer
from service.train.report import (
    CURVES_FILE,
    METRICS_FILE,
    RESULT_FILE,
    is_better,
    plot_curves,
    read_json,
    write_json,
    write_metrics,
)


@dataclass
class Run:
    """Everything a run works with, built once by :func:`setup`."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    labels: list[str]
    splits: dict[str, Split]
    frontend: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def setup(cfg: TrainConfig) -> Run:
    """Seed, load the data, build the model and its optimizer: identical for every resume."""
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads or usable_cores())
    checkpoint.seed_everything(cfg.seed)
    labels, splits = load_dataset(Path(cfg.data))
    frontend = build_frontend(cfg).to(device)
    if cfg.mixup == 0:
        splits = {name: with_features(split, frontend) for name, split in splits.items()}
    model = build_model(cfg, len(labels)).to(device)
    optimizer, scheduler = build_optimizer(
        model, cfg.lr, cfg.weight_decay, n_train_batches(len(splits["train"]), cfg.batch_size),
        cfg.epochs, cfg.warmup_epochs)
    return Run(cfg, Path(cfg.out), device, labels, splits, frontend, model, optimizer, scheduler)


def train(cfg: TrainConfig, resume: bool = False,
          stop_after: int | None = None) -> dict[str, Any] | None:
    """Run (or continue) training; returns result.json's content, or None when ``stop_after``
    epochs were run and the schedule is not finished yet."""
    run = setup(cfg)
    run.out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None}
    if resume and (run.out / checkpoint.CHECKPOINT_FILE).is_file():
        state = _restore(run)
        tqdm.write(f"resuming {run.out} after epoch {state['epoch']}")
    cfg.save(run.out)

    augment = Augment.from_config(cfg, log_floor_value(run.frontend))
    last = cfg.epochs if stop_after is None else min(cfg.epochs, state["epoch"] + stop_after)
    for epoch in range(state["epoch"] + 1, last + 1):
        start = time.perf_counter()
        lr = run.scheduler.get_last_lr()[0]
        stats = train_epoch(run.model, run.frontend, run.splits["train"], run.optimizer,
                            run.scheduler, cfg, augment, run.device,
                            desc=f"epoch {epoch}/{cfg.epochs}")
        val = evaluate(run.model, run.frontend, run.splits["validation"], cfg.eval_batch_size,
                       run.device)
        row = {"epoch": epoch, **stats, "val_loss": val["loss"], "val_acc": val["acc"],
               "lr": lr, "seconds": time.perf_counter() - start}
        _end_epoch(run, state, row)
    if state["epoch"] < cfg.epochs:
        return None
    return _finish(run, state)


def _end_epoch(run: Run, state: dict[str, Any], row: dict[str, float]) -> None:
    """Record the epoch, keep the best model, checkpoint, refresh the log and the curves."""
    state["history"].append(row)
    state["epoch"] = int(row["epoch"])
    if is_better(row, state["best"]):
        state["best"] = {k: row[k] for k in ("epoch", "val_acc", "val_loss")}
        checkpoint.save({"model": run.model.state_dict(), **state["best"]},
                        run.out / checkpoint.BEST_FILE)
    checkpoint.save({**state, "model": run.model.state_dict(),
                     "optimizer": run.optimizer.state_dict(),
                     "scheduler": run.scheduler.state_dict(), "rng": checkpoint.rng_state(),
                     "config": run.cfg.to_dict()}, run.out / checkpoint.CHECKPOINT_FILE)
    write_metrics(run.out / METRICS_FILE, state["history"])
    plot_curves(run.out / CURVES_FILE, state["history"], title=run.out.name)
    tqdm.write(f"epoch {state['epoch']}: loss {row['train_loss']:.4f} (ce {row['train_ce']:.4f}, "
               f"guide {row['guide_loss']:.4f}) val loss {row['val_loss']:.4f} "
               f"acc {100 * row['val_acc']:.2f}% lr {row['lr']:.2e} {row['seconds']:.1f}s")


def _restore(run: Run) -> dict[str, Any]:
    """Load the last checkpoint into the run (RNG states too); returns the epoch state."""
    path = run.out / checkpoint.CHECKPOINT_FILE
    saved = checkpoint.load(path)
    saved_config = with_defaults(saved["config"])
    changed = {k for k, v in run.cfg.to_dict().items() if saved_config.get(k) != v}
    if changed - PLACE_AND_SPEED_FIELDS:
        raise ValueError(f"cannot resume {path}: config differs in {sorted(changed)}")
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    checkpoint.set_rng_state(saved["rng"])
    return {k: saved[k] for k in ("epoch", "history", "best")}


def _held_out_scores(run: Run) -> dict[str, float]:
    """``<split>_acc`` and ``<split>_loss`` of the loaded model on each held-out split (the
    engine-disjoint test: the best validation epoch, tested once, like test)."""
    scores = {}
    for name in HELD_OUT_SPLITS:
        if name in run.splits:
            found = evaluate(run.model, run.frontend, run.splits[name],
                             run.cfg.eval_batch_size, run.device, desc=name)
            scores |= {f"{name}_acc": found["acc"], f"{name}_loss": found["loss"]}
    return scores


def add_held_out(cfg: TrainConfig) -> dict[str, Any]:
    """A finished run's result.json completed with the held-out splits it lacks (runs
    finished before the trainer tested them): its best checkpoint, tested once on each."""
    path = Path(cfg.out) / RESULT_FILE
    result = read_json(path)
    run = setup(cfg)
    run.model.load_state_dict(checkpoint.load(run.out / checkpoint.BEST_FILE)["model"])
    missing = {k: v for k, v in _held_out_scores(run).items() if k not in result}
    if missing:
        result |= missing
        write_json(path, result)
    return result


def _finish(run: Run, state: dict[str, Any]) -> dict[str, Any]:
    """Test the best validation epoch once; measure its costs; write result.json."""
    cfg = run.cfg
    run.model.load_state_dict(checkpoint.load(run.out / checkpoint.BEST_FILE)["model"])
    test = evaluate(run.model, run.frontend, run.splits["test"], cfg.eval_batch_size,
                    run.device, desc="test")
    held_out = _held_out_scores(run)
    seconds = [row["seconds"] for row in state["history"]]
    result = {
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        **held_out,
        "val_acc": state["best"]["val_acc"],
        "val_loss": state["best"]["val_loss"],
        "best_epoch": state["best"]["epoch"],
        "epochs": cfg.epochs,
        "seconds_per_epoch": sum(seconds) / len(seconds),
        **model_costs(run.model, cfg.in_t_dim, cfg.n_mels),
        "labels": run.labels,
        "dataset": dataset_summary(Path(cfg.data), run.splits),
        "config": cfg.to_dict(),
        "device": str(run.device),
        "torch": torch.__version__,
    }
    write_json(run.out / RESULT_FILE, result)
    tqdm.write(f"{run.out}: test acc {100 * test['acc']:.2f}% (best epoch "
               f"{result['best_epoch']}, val acc {100 * result['val_acc']:.2f}%)")
    return result
