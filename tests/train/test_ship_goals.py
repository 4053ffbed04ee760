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
