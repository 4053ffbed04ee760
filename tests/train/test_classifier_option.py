"""The ``classifier`` option of a training run: saved with the run, rebuilt on resume and
export, chosen on the command line; runs from before it existed still resume."""

import argparse
from pathlib import Path

import pytest

from service.bcresnet import BCResNet
from service.classifier import Classifier
from service.pipeline import CLASSIFIERS as MODEL_CLASSIFIERS
from service.train import checkpoint
from service.train.config import (
    CLASSIFIERS,
    DEFAULT_WIDTHS,
    TrainConfig,
    add_arguments,
    config_from_args,
    with_defaults,
)
from service.train.model import build_model
from service.train.trainer import train
from tests.train.test_training import tiny_config


def parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(["--data", "d", "--out", "o", *argv]))


def test_config_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(data="d", out="o", classifier="bcresnet", width=40)
    cfg.save(tmp_path)
    assert TrainConfig.load(tmp_path) == cfg
    assert TrainConfig(data="d", out="o").classifier == "cnn"  # default unchanged
    assert set(CLASSIFIERS) == set(MODEL_CLASSIFIERS) == set(DEFAULT_WIDTHS)
    with pytest.raises(ValueError, match="classifier"):
        TrainConfig(data="d", out="o", classifier="resnet")


def test_build_model_follows_the_config() -> None:
    cnn = build_model(TrainConfig(data="d", out="o"), 5)
    assert type(cnn.classifier) is Classifier
    model = build_model(TrainConfig(data="d", out="o", compressor="full", classifier="bcresnet",
                                    width=8), 5)
    assert type(model.classifier) is BCResNet and model.classifier.in_channels == 1


def test_cli_flag_and_width_per_classifier() -> None:
    assert parse([]).classifier == "cnn" and parse([]).width == 32
    cfg = parse(["--classifier", "bcresnet"])
    assert cfg.classifier == "bcresnet" and cfg.width == DEFAULT_WIDTHS["bcresnet"] == 40
    assert parse(["--classifier", "bcresnet", "--width", "16"]).width == 16
    with pytest.raises(SystemExit):
        parse(["--classifier", "resnet"])


def test_old_configs_get_the_defaults() -> None:
    old = TrainConfig(data="d", out="o").to_dict()
    del old["classifier"]
    assert with_defaults(old)["classifier"] == "cnn"
    assert TrainConfig(**with_defaults(old)) == TrainConfig(data="d", out="o")


def test_bcresnet_run_resumes_with_its_classifier(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "run", epochs=2, classifier="bcresnet")
    assert train(cfg, stop_after=1) is None
    saved = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert saved["config"]["classifier"] == "bcresnet"
    assert TrainConfig.load(tmp_path / "run").classifier == "bcresnet"
    with pytest.raises(ValueError, match="classifier"):  # another classifier is another run
        train(tiny_config(tiny_data, tmp_path / "run", epochs=2), resume=True)
    result = train(cfg, resume=True)  # load_state_dict is strict: the same classifier
    assert result["config"]["classifier"] == "bcresnet" and result["epochs"] == 2
    assert result["classifier_mflops"] > 0


def test_a_run_from_before_the_option_resumes(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "old", epochs=2)
    train(cfg, stop_after=1)
    path = tmp_path / "old" / "checkpoint.pt"
    saved = checkpoint.load(path)
    del saved["config"]["classifier"]
    checkpoint.save(saved, path)
    assert train(cfg, resume=True)["epochs"] == 2


def test_experiments_train_the_chosen_classifier_at_its_width(tmp_path: Path) -> None:
    from service.train.experiments import run_config
    from service.train.results import BY_NAME

    args = argparse.Namespace(data="d", out=tmp_path, epochs=1, batch_size=4, mixup=0.0,
                              threads=1, classifier="bcresnet")
    cfg = run_config(args, BY_NAME["diffres-0.5"], seed=0)
    assert (cfg.classifier, cfg.width) == ("bcresnet", 40)
