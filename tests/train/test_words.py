"""The `_unknown_` vocabulary: near-misses of every keyword, and no homophone of one."""

import subprocess
from collections import Counter

import numpy as np
import pytest

from service.train import dataset, words
from service.train.voices import ESPEAK_ACCENTS
from tests.conftest import require_tool


def test_every_keyword_has_near_misses_in_unknown() -> None:
    assert set(words.NEAR_MISSES) == set(words.KEYWORDS)
    for keyword, misses in words.NEAR_MISSES.items():
        assert len(misses) >= 3 and set(misses) <= set(words.UNKNOWN_WORDS), keyword
    for pair in ("lift", "light", "cup", "top", "town", "yet", "of", "one", "so", "do", "to"):
        assert pair in words.UNKNOWN_WORDS


def test_homophones_of_keywords_are_left_out() -> None:
    spelled_alike = {w for ws in words.HOMOPHONES.values() for w in ws}
    assert {"know", "write"} <= spelled_alike
    assert not spelled_alike & set(words.UNKNOWN_WORDS)
    assert not set(words.UNKNOWN_WORDS) & set(words.KEYWORDS)
    assert len(set(words.UNKNOWN_WORDS)) == len(words.UNKNOWN_WORDS)
    assert not set(words.BABBLE_WORDS) & (set(words.UNKNOWN_WORDS) | set(words.KEYWORDS))


def test_unknown_clips_say_near_misses_at_the_recipe_share() -> None:
    rng = np.random.default_rng(0)
    drawn = Counter(dataset.unknown_word(rng, dataset.Recipe()) for _ in range(4000))
    share = sum(n for w, n in drawn.items() if w in words.NEAR_MISS_WORDS) / 4000
    assert share == pytest.approx(0.5, abs=0.05)
    assert set(words.NEAR_MISS_WORDS) <= set(drawn)  # every near-miss is spoken


def phonemes(accent: str, items: list[str]) -> dict[str, str]:
    """espeak-ng's phoneme string of each word, one clause per line."""
    text = "".join(f"{w}.\n" for w in items)
    out = subprocess.run(["espeak-ng", "-q", "-x", "-v", accent, "--stdin"], input=text,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    lines = [line.strip() for line in out if line.strip()]
    assert len(lines) == len(items)
    return dict(zip(items, lines))


@pytest.mark.parametrize("accent", ESPEAK_ACCENTS)
def test_no_unknown_word_sounds_like_a_keyword(accent: str) -> None:
    require_tool("espeak-ng")
    left_out = [w for ws in words.HOMOPHONES.values() for w in ws]
    spoken = phonemes(accent, [*words.KEYWORDS, *words.UNKNOWN_WORDS, *left_out])
    keyword_sounds = {spoken[k] for k in words.KEYWORDS}
    assert [w for w in words.UNKNOWN_WORDS if spoken[w] in keyword_sounds] == []
    assert spoken["know"] == spoken["no"] and spoken["write"] == spoken["right"]  # why


def test_context_words_are_never_labelled_words_nor_the_test_phrases() -> None:
    from service.train.ship_goals import PHRASES

    context = set(words.CONTEXT_WORDS)
    assert len(context) == len(words.CONTEXT_WORDS)
    assert not context & (set(words.UNKNOWN_WORDS) | set(words.KEYWORDS))
    assert not context & {w for phrase, _ in PHRASES for w in phrase.split()}
