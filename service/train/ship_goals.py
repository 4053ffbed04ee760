"""Does a model directory meet the goals of a shipped default model (issue #13, item 7)?

    python -m service.train.ship_goals --model model_store/kws12-diffres/6 [--data data/kws12-all]
        [--non-speech 500] [--json out.json]

Every figure goes through ``service.predict`` (the model's own exported files, the server's
windows, aggregate rule and detections):

* **accuracy** on the dataset's ``test`` split (in distribution) and ``test_cross`` (the
  voice family training never heard): the clip's top label against its label. A dataset on
  every family has no ``test_cross``; then the cross-engine figure is the manifest's, which
  ``export_run --cross-engine-from`` took from the model's twin (same recipe, one family
  held out), and the table says so;
* **keywords inside phrases**: each of ``PHRASES`` spoken by every flite voice training never
  heard (the held-out family's, or for a dataset on every family its test split's), in the
  middle of 1.5 s of silence; found when its keyword is among the detections;
* **non-speech**: ``--non-speech`` generated clips (tones, beeps, chords, music, coloured
  noise, hum, clicks; 1 s, peak -40 to -3 dBFS, a seed of their own) that must give no
  keyword: no detection, and a background class on top.

Prints a markdown table with each goal met or missed, and optionally the figures as JSON.
With ``--data`` it also measures the ``validation`` split, the one figure two candidate
models may be chosen on (no goal: the test figures never choose).
Needs espeak-ng/flite only for the phrases (``--no-phrases`` skips them).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.manifest import BACKGROUND_LABELS
from service.predict import Predictor
from service.train import acoustics
from service.train.breakdown import split_predictions
from service.train.data import read_metadata, read_recipe
from service.train.voices import FLITE_VOICES, Utterance, speak

GOALS = {"test_acc": 0.95, "test_cross_acc": 0.90, "phrases_found": 1.0,
         "non_speech_clean": 0.99}
# (phrase, its one keyword): the keyword inside other speech, as a user would say it.
PHRASES = (("front left", "left"), ("turn it on", "on"), ("yes please", "yes"),
           ("look down", "down"), ("please stop", "stop"), ("let us go", "go"))
NON_SPEECH_KINDS = ("tone", "beeps", "chord", "music", "white", "pink", "brown", "hum",
                    "clicks")
PHRASE_SECONDS = 1.5
NON_SPEECH_SEED = 20_261_202  # not the dataset's: clips training never saw


def split_accuracy(predictor: Predictor, root: Path, split: str) -> float | None:
    """Top-label accuracy over one split of the dataset at ``root``; None if it has none."""
    right = [top == row["label"] for row, top in split_predictions(predictor, root, split)]
    return sum(right) / len(right) if right else None


def in_silence(speech: np.ndarray, samples: int) -> np.ndarray:
    """``speech`` centred in ``samples`` of digital silence (cropped if longer)."""
    out = np.zeros(samples, np.float32)
    speech = speech[:samples]
    start = (samples - len(speech)) // 2
    out[start:start + len(speech)] = speech
    return out


def phrases_found(predictor: Predictor, voices: list[str]) -> tuple[float, list[dict]]:
    """Share of (phrase, voice) whose keyword is detected; and every case's detections."""
    rate = predictor.manifest.frontend.sample_rate
    cases = []
    for phrase, keyword in PHRASES:
        for voice in voices:
            speech = speak(Utterance(voice, phrase, 1.0, 0.0)).astype(np.float32)
            found = predictor.classify(in_silence(speech, int(PHRASE_SECONDS * rate)))
            labels = sorted({d["label"] for d in found["detections"]})
            cases.append({"phrase": phrase, "keyword": keyword, "voice": voice,
                          "detected": labels, "found": keyword in labels})
    return sum(c["found"] for c in cases) / len(cases), cases


def non_speech_clean(predictor: Predictor, count: int) -> tuple[float, dict[str, int]]:
    """Share of generated non-speech clips that give no keyword; false alarms per kind."""
    rng = np.random.default_rng(NON_SPEECH_SEED)
    rate, labels = predictor.manifest.frontend.sample_rate, predictor.manifest.labels
    alarms = dict.fromkeys(NON_SPEECH_KINDS, 0)
    for i in tqdm(range(count), desc="non-speech", leave=False):
        kind = NON_SPEECH_KINDS[i % len(NON_SPEECH_KINDS)]
        clip = acoustics.set_peak(acoustics.non_speech(rng, kind, rate), rng.uniform(-40, -3))
        found = predictor.classify(clip.astype(np.float32))
        top = labels[int(np.argmax(found["probabilities"]))]
        alarms[kind] += bool(found["detections"]) or top not in BACKGROUND_LABELS
    return 1 - sum(alarms.values()) / count, alarms


def held_out_voices(root: Path | None) -> list[str]:
    """Flite voices training never heard: all of them when the dataset holds flite out, or,
    for a dataset that trains on every family (``held_out`` "none"), the flite voices of its
    test split alone."""
    family = read_recipe(root).get("params", {}).get("held_out", "flite") if root else "flite"
    if family == "flite":
        return [f"flite:{v}" for v in FLITE_VOICES if v != "kal16"]
    if family == "none":
        rows = read_metadata(root)
        heard = {r["speaker"] for r in rows if r["split"] != "test"}
        unheard = sorted({r["speaker"] for r in rows if r["split"] == "test"
                          and r["speaker"].startswith("flite:")} - heard)
        if not unheard:
            raise SystemExit("phrases need flite voices training never heard; this dataset's "
                             "test split has none (use --no-phrases)")
        return unheard
    raise SystemExit(f"phrases need flite voices training never heard; the dataset holds out "
                     f"{family!r} (use --no-phrases)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.train.ship_goals",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model version directory")
    parser.add_argument("--data", type=Path, help="the dataset (test and test_cross splits)")
    parser.add_argument("--non-speech", type=int, default=500)
    parser.add_argument("--no-phrases", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    predictor = Predictor(args.model)
    found: dict = {"model": str(args.model)}
    if args.data:
        for split in ("validation", "test", "test_cross"):
            found[f"{split}_acc"] = split_accuracy(predictor, args.data, split)
    if found.get("test_cross_acc") is None and "test_cross_from" in predictor.manifest.metrics:
        found["test_cross_acc"] = predictor.manifest.metrics["test_cross_acc"]
        found["test_cross_from"] = predictor.manifest.metrics["test_cross_from"]["run"]
    if not args.no_phrases:
        found["phrases_found"], found["phrases"] = phrases_found(
            predictor, held_out_voices(args.data))
    found["non_speech_clean"], found["non_speech_alarms"] = non_speech_clean(
        predictor, args.non_speech)

    print(f"## Shipped-model goals: {args.model}\n")
    print("| goal | measured | target | status |\n|---|---:|---:|---|")
    for key, target in GOALS.items():
        value = found.get(key)
        status = "not measured" if value is None else ("met" if value >= target else "MISSED")
        shown = "-" if value is None else f"{100 * value:.1f} %"
        print(f"| {key} | {shown} | >= {100 * target:.0f} % | {status} |")
    if found.get("validation_acc") is not None:
        print(f"\nvalidation_acc (to choose between models; no goal): "
              f"{100 * found['validation_acc']:.1f} %")
    if "test_cross_from" in found:
        print(f"\ntest_cross_acc: the manifest's, measured on its twin {found['test_cross_from']}")
    if "phrases" in found:
        missed = [f"{c['phrase']!r} by {c['voice']} (detected {c['detected']})"
                  for c in found["phrases"] if not c["found"]]
        print(f"\nphrases missed: {'; '.join(missed) or 'none'}")
    print(f"non-speech false alarms by kind: {found['non_speech_alarms']}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
