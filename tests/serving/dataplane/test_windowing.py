"""Overlapping windows, the clip aggregate, detections and frame scores (service/serving/
windowing.py): pure functions, no model."""

import numpy as np
import pytest

from service.config import Settings
from service.serving.dataplane import windowing as W

KWS = ["yes", "no", "up", "_silence_", "_unknown_"]


def window_probs(rows: list[dict[str, float]], labels=KWS, rest: float = 0.01) -> np.ndarray:
    """One row per window: the given probabilities, every other label ``rest``, normalised."""
    probs = np.array([[row.get(label, rest) for label in labels] for row in rows])
    return probs / probs.sum(axis=1, keepdims=True)


def top(probs: np.ndarray, labels=KWS) -> str:
    return labels[int(np.argmax(probs))]


# --- overlapping split -----------------------------------------------------------------


def test_hop_default_is_half_a_window_or_less():
    assert Settings().window_hop_fraction == 0.5
    assert W.hop_frames(101) == 50 and W.hop_frames(100) == 50
    assert W.hop_frames(101, 1.0) == 101 and W.hop_frames(3, 0.1) == 1
    with pytest.raises(ValueError):
        W.hop_frames(101, 0.0)


def test_window_starts_reach_the_last_frame():
    assert W.window_starts(250, 101, 50).tolist() == [0, 50, 100, 150]
    assert W.window_starts(101, 101, 50).tolist() == [0]
    assert W.window_starts(102, 101, 50).tolist() == [0, 50]
    assert W.window_starts(3001, 101, 50)[-1] + 101 >= 3001
    assert W.window_starts(250, 101, 101).tolist() == [0, 101, 202]
    with pytest.raises(ValueError):
        W.window_starts(250, 101, 102)  # a hop over a window would skip frames


def test_overlapping_split_pads_only_the_end():
    features = np.arange(250 * 2, dtype=np.float32).reshape(250, 2)
    windows, valid = W.split_windows(features, 101, -1.0, hop=50)
    assert windows.shape == (4, 101, 2) and valid.tolist() == [101, 101, 101, 100]
    for i, start in enumerate([0, 50, 100, 150]):
        real = min(101, 250 - start)
        np.testing.assert_array_equal(windows[i, :real], features[start:start + real])
    assert np.all(windows[:3] != -1.0) and np.all(windows[3, 100:] == -1.0)


def test_split_default_hop_is_back_to_back():
    features = np.zeros((250, 2), np.float32)
    _, valid = W.split_windows(features, 101, 0.0)
    assert valid.tolist() == [101, 101, 48]


def test_clip_shorter_than_a_window_is_one_padded_window():
    silence = np.array([-5.0, -7.0], np.float32)
    windows, valid = W.split_windows(np.ones((30, 2), np.float32), 101, silence, hop=50)
    assert windows.shape == (1, 101, 2) and valid.tolist() == [30]
    assert np.all(windows[0, :30] == 1) and np.all(windows[0, 30:] == silence)


def test_window_times_use_starts_and_real_frames():
    starts = W.window_starts(250, 101, 50)
    _, valid = W.split_windows(np.zeros((250, 1), np.float32), 101, 0.0, hop=50)
    assert W.window_times(valid, 101, 0.01, starts) == [(0.0, 1.01), (0.5, 1.51), (1.0, 2.01),
                                                        (1.5, 2.5)]


# --- aggregate ---------------------------------------------------------------------------


def test_one_window_is_its_own_probabilities():
    probs = window_probs([{"yes": 0.5, "_silence_": 0.3}])
    np.testing.assert_allclose(W.aggregate(probs, KWS), probs[0])


def test_all_silence_clip_reports_silence_on_top():
    probs = window_probs([{"_silence_": 0.9, "up": 0.04}, {"_silence_": 0.95},
                          {"_silence_": 0.8, "no": 0.1}] * 10)
    clip = W.aggregate(probs, KWS)
    assert top(clip) == "_silence_" and clip.sum() == pytest.approx(1)


def test_one_keyword_window_among_silence_reports_the_keyword_on_top():
    """The mean over 30 windows would bury it (0.7 / 30); the aggregate does not."""
    silence = {"_silence_": 0.97}
    rows = [silence] * 15 + [{"yes": 0.7, "_silence_": 0.2}] + [silence] * 14
    probs = window_probs(rows)
    assert top(probs.mean(axis=0)) == "_silence_"
    clip = W.aggregate(probs, KWS)
    assert top(clip) == "yes" and clip.sum() == pytest.approx(1)


def test_background_classes_share_their_mass():
    """Half silence, half unknown speech: no keyword on top; the background mass is the
    least background window's, shared by the classes' means."""
    probs = window_probs([{"_silence_": 0.9}] * 3 + [{"_unknown_": 0.9}] * 3)
    clip = W.aggregate(probs, KWS)
    assert top(clip) in ("_silence_", "_unknown_")
    assert clip[3] == pytest.approx(clip[4])


def test_no_background_labels_is_per_class_max_renormalised():
    labels = ["a", "b", "c"]
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    np.testing.assert_allclose(W.aggregate(probs, labels), np.array([0.6, 0.7, 0.1]) / 1.4)


def test_aggregate_checks_its_shape():
    with pytest.raises(ValueError):
        W.aggregate(np.zeros((0, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError):
        W.aggregate(np.ones((2, 2)) / 2, ["a", "b", "c"])


# --- detections --------------------------------------------------------------------------


def test_overlapping_windows_of_one_label_merge():
    probs = window_probs([{"_silence_": 0.9}, {"yes": 0.6}, {"yes": 0.8}, {"_silence_": 0.9},
                          {"no": 0.7}])
    starts = W.window_starts(301, 101, 50)
    valid = np.minimum(101, 301 - starts)
    found = W.detections(probs, KWS, starts, valid, 0.01, threshold=0.5)
    assert [d["label"] for d in found] == ["yes", "no"]
    yes, no = found
    assert yes["start"] == 0.5 and yes["end"] == 2.01  # windows 1 and 2 (frames 50..201)
    assert yes["probability"] == pytest.approx(probs[2, 0])
    assert no["start"] == 2.0 and no["end"] == 3.01 and set(yes) == {"label", "probability",
                                                                      "start", "end"}


def test_adjacent_windows_merge_and_separated_ones_do_not():
    probs = window_probs([{"yes": 0.9}, {"yes": 0.9}, {"_silence_": 0.9}, {"yes": 0.9}])
    starts = np.array([0, 101, 202, 303])
    valid = np.array([101, 101, 101, 50])
    found = W.detections(probs, KWS, starts, valid, 0.01, threshold=0.5)
    assert [(d["start"], d["end"]) for d in found] == [(0.0, 2.02), (3.03, 3.53)]


def test_background_and_sub_threshold_windows_are_not_detections():
    probs = window_probs([{"_silence_": 0.9}, {"_unknown_": 0.9},
                          {"up": 0.4, "_unknown_": 0.55}])
    starts = W.window_starts(201, 101, 50)
    found = W.detections(probs, KWS, starts, np.minimum(101, 201 - starts), 0.01, 0.5)
    assert found == []
    assert [d["label"] for d in W.detections(probs, KWS, starts, np.minimum(101, 201 - starts),
                                             0.01, 0.3)] == ["up"]


def test_detection_times_are_on_the_frame_grid():
    probs = window_probs([{"yes": 0.9}] * 3)
    starts = W.window_starts(213, 101, 56)
    found = W.detections(probs, KWS, starts, np.minimum(101, 213 - starts), 0.032, 0.5)
    (d,) = found
    assert d["start"] == 0.0 and d["end"] == round(213 * 0.032, 9)
    for value in (d["start"], d["end"]):
        assert value / 0.032 == pytest.approx(round(value / 0.032), abs=1e-6)


def test_detections_are_ordered_by_start_then_label():
    probs = window_probs([{"no": 0.45, "yes": 0.45}, {"up": 0.9}], rest=0.001)
    starts = W.window_starts(151, 101, 50)
    found = W.detections(probs, KWS, starts, np.minimum(101, 151 - starts), 0.01, 0.4)
    assert [d["label"] for d in found] == ["yes", "no", "up"]


# --- frame scores ------------------------------------------------------------------------


def test_frame_scores_back_to_back_concatenate():
    per_window = [np.full(4, 1.0), np.full(4, 2.0), np.full(4, 3.0)]
    assert W.frame_scores(per_window, 10).tolist() == [1] * 4 + [2] * 4 + [3] * 2
    starts = np.array([0, 4, 8])
    assert W.frame_scores(per_window, 10, starts).tolist() == [1] * 4 + [2] * 4 + [3] * 2


def test_frame_scores_with_overlap_come_from_the_most_central_window():
    size, hop, frames = 8, 4, 18
    starts = W.window_starts(frames, size, hop)  # 0, 4, 8, 12; centres 4, 8, 12, 16
    per_window = [np.arange(size) + 100.0 * (i + 1) for i in range(len(starts))]
    scores = W.frame_scores(per_window, frames, starts)
    assert len(scores) == frames
    # frame t: window 0 for t < 6 (tie at t + 1/2 = 6 -> earlier), 1 for 6..9, 2 for 10..13,
    # 3 from 14 on; each score is the window's own value at that frame
    owner = [0] * 6 + [1] * 4 + [2] * 4 + [3] * 4
    expected = [per_window[w][t - starts[w]] for t, w in enumerate(owner)]
    assert scores.tolist() == expected


def test_frame_scores_of_a_short_clip_drop_the_padding():
    scores = W.frame_scores([np.arange(101, dtype=np.float32)], 30, np.array([0]))
    assert scores.tolist() == list(range(30))
