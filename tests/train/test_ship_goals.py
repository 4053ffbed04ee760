"""The shipped-model goal check runs end to end and reports every goal."""

import json

import numpy as np
import pytest

from service.train.ship_goals import GOALS, NON_SPEECH_KINDS, in_silence, main
from tests.model_store_builder import export_test_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_test_model("diffres", tmp_path_factory.mktemp("store") / "m" / "1", "m", seed=5)


def test_phrase_sits_in_the_middle_of_silence():
    out = in_silence(np.ones(10, np.float32), 30)
    assert out.shape == (30,) and out[10:20].all() and not out[:10].any() and not out[20:].any()
    assert in_silence(np.ones(50, np.float32), 30).all()  # cropped, never longer


def test_reports_every_goal_and_counts_false_alarms_per_kind(model_dir, tmp_path, capsys):
    out = tmp_path / "goals.json"
    assert main(["--model", str(model_dir), "--no-phrases", "--non-speech", "18",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(f"| {goal} |" in table for goal in GOALS)
    found = json.loads(out.read_text())
    alarms = found["non_speech_alarms"]
    assert set(alarms) == set(NON_SPEECH_KINDS)
    assert found["non_speech_clean"] == pytest.approx(1 - sum(alarms.values()) / 18)


def test_phrase_voices_are_those_training_never_heard(tmp_path):
    import csv

    from service.train.ship_goals import held_out_voices

    (tmp_path / "recipe.json").write_text(json.dumps({"params": {"held_out": "none"}}))
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "speaker"])
        writer.writerows([["a", "train", "flite:slt"], ["b", "test", "flite:slt"],
                          ["c", "test", "flite:kal"], ["d", "validation", "flite:rms"],
                          ["e", "test", "espeak-ng:en"]])
    assert held_out_voices(tmp_path) == ["flite:kal"]
    with open(tmp_path / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerow(["f", "train", "flite:kal"])
    with pytest.raises(SystemExit, match="none"):  # every flite voice heard: no phrase test
        held_out_voices(tmp_path)
    (tmp_path / "recipe.json").write_text(json.dumps({"params": {"held_out": "flite"}}))
    assert "flite:slt" in held_out_voices(tmp_path)


def test_without_a_cross_split_the_twins_cross_engine_figure_is_reported_and_named(
        model_dir, tmp_path, capsys):
    import shutil

    from service.manifest import Manifest

    model = shutil.copytree(model_dir, tmp_path / "m")
    manifest = Manifest.read(model)
    twin = {"run": "experiments/x/diffres-0.5-s0", "held_out": "flite"}
    manifest.model_copy(update={"metrics": {"test_cross_acc": 0.42,
                                            "test_cross_from": twin}}).write(model)
    out = tmp_path / "goals.json"
    main(["--model", str(model), "--no-phrases", "--non-speech", "9", "--json", str(out)])
    table = capsys.readouterr().out
    assert "| test_cross_acc | 42.0 % | >= 90 % | MISSED |" in table
    assert "measured on its twin experiments/x/diffres-0.5-s0" in table
    assert json.loads(out.read_text())["test_cross_from"] == twin["run"]


def test_validation_is_measured_apart_from_test_to_choose_on(model_dir, tmp_path, capsys):
    import csv

    import soundfile as sf

    from service.predict import Predictor

    predictor = Predictor(model_dir)
    labels, rate = predictor.manifest.labels, predictor.manifest.frontend.sample_rate
    rows = []
    for i, split in enumerate(["validation", "validation", "test", "test"]):
        wave = np.random.default_rng(i).normal(0, 0.1, rate).astype(np.float32)
        sf.write(tmp_path / f"{i}.wav", wave, rate)
        top = labels[int(np.argmax(predictor.classify(wave)["probabilities"]))]
        wrong = labels[(labels.index(top) + 1) % len(labels)]
        rows.append([f"{i}.wav", top if split == "validation" else wrong, split])
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    out = tmp_path / "goals.json"
    main(["--model", str(model_dir), "--data", str(tmp_path), "--no-phrases",
          "--non-speech", "9", "--json", str(out)])
    found = json.loads(out.read_text())
    assert (found["validation_acc"], found["test_acc"]) == (1.0, 0.0)
    assert "validation_acc (to choose between models; no goal): 100.0 %" in capsys.readouterr().out
