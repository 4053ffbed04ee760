"""Runs side by side: figures of the best validation epoch, unfinished runs marked."""

from pathlib import Path

import pytest

from service.train.compare_runs import main, run_row
from service.train.report import METRICS_FILE, RESULT_FILE, write_json, write_metrics


def fake_run(root: Path, name: str, val_accs: list[float], planned: int,
             result: dict | None = None, val_losses: list[float] | None = None) -> Path:
    run = root / "exp" / name
    run.mkdir(parents=True)
    write_json(run / "config.json", {"epochs": planned})
    losses = val_losses or [1.0] * len(val_accs)
    write_metrics(run / METRICS_FILE, [
        {"epoch": i + 1, "train_loss": 1.0, "train_ce": 1.0, "guide_loss": 0.0,
         "val_loss": loss, "val_acc": acc, "lr": 1e-3, "seconds": 30.0}
        for i, (acc, loss) in enumerate(zip(val_accs, losses, strict=True))])
    if result is not None:
        write_json(run / RESULT_FILE, result)
    return run


def test_a_finished_run_reports_its_best_validation_epoch_and_test_figures(tmp_path):
    run = fake_run(tmp_path, "full-s0", [0.5, 0.7, 0.6], 3,
                   {"test_acc": 0.65, "test_cross_acc": 0.4})
    row = run_row(run)
    assert (row["run"], row["best_epoch"], row["finished"]) == ("exp/full-s0", 2, True)
    assert row["val_acc"] == pytest.approx(70.0)
    assert (row["test_acc"], row["test_cross_acc"]) == (pytest.approx(65.0), pytest.approx(40.0))
    assert row["minutes"] == pytest.approx(1.5)


def test_the_best_epoch_is_the_one_the_trainer_keeps(tmp_path):
    run = fake_run(tmp_path, "full-s0", [0.7, 0.7], 2, val_losses=[1.0, 0.5])
    assert run_row(run)["best_epoch"] == 2  # a tie in accuracy goes to the lower loss


def test_an_unfinished_run_shows_how_far_it_got_and_no_test_figure(tmp_path, capsys):
    fake_run(tmp_path, "full-s0", [0.5, 0.7], 60)
    assert main([str(tmp_path / "exp" / "full-s0")]) == 0
    line = capsys.readouterr().out.splitlines()[2]
    assert line == "| exp/full-s0 | 2 of 60 (running) | 2 | 70.00 |  |  | 1 |"


def test_writes_the_validation_curves_when_asked(tmp_path):
    runs = [fake_run(tmp_path, f"c-s{i}", [0.3, 0.4 + i / 10], 2, {"test_acc": 0.5})
            for i in range(2)]
    plot = tmp_path / "curves.png"
    assert main([*map(str, runs), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2
