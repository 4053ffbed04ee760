"""What each perturbation of the keyword set does to a signal: band limits, EQ, vocal-tract
warp, pitch shift, rooms, noise at an SNR, and the non-speech of `_silence_`. Pure numpy on
seeded signals: no TTS engine needed."""

from pathlib import Path

import numpy as np
import pytest

from service.train import acoustics, dataset, perturb, rooms
from service.train.dataset import Clip, Context, Recipe

SR = acoustics.SAMPLE_RATE


def band_share(x: np.ndarray, low: float, high: float) -> float:
    """Share of x's energy between low and high Hz."""
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(power[(f >= low) & (f < high)].sum() / power.sum())


def vowel(f0: float = 160.0, n: int = SR) -> np.ndarray:
    """A harmonic source at f0 through three formant resonances (700, 1200, 2600 Hz)."""
    t = np.arange(n) / SR
    src = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, int(7800 / f0)))
    return perturb.filter_fft(src, lambda f: sum(1 / (1 + ((f - c) / b) ** 2) for c, b in
                                                 ((700, 80), (1200, 90), (2600, 120))))


def white(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SR)


def test_telephone_keeps_300_to_3400_hz_only() -> None:
    out = perturb.telephone(white())
    assert len(out) == SR
    assert band_share(out, 3400, 8000) < 1e-3  # white noise had 58% up there
    assert band_share(out, 0, 300) < 1e-3
    assert band_share(out, 400, 3300) > 0.95  # the rest: mu-law steps near the edges


def test_band_limit_removes_what_is_outside_the_band() -> None:
    out = perturb.band_limit(white(1), 500.0, 2000.0)
    assert band_share(out, 2000, 8000) < 1e-4 and band_share(out, 0, 500) < 1e-4


def test_cheap_microphone_cuts_the_top_octave() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        out = perturb.cheap_mic(rng, white(3))
        # white noise has 6% there; what is left is the soft clipping's distortion
        assert band_share(out, 7500, 8000) < 0.01 and np.all(np.isfinite(out))


def test_random_equalisation_tilts_the_spectrum_but_keeps_it_broadband() -> None:
    rng = np.random.default_rng(4)
    x = white(5)
    outs = [perturb.equalise(rng, x) for _ in range(4)]
    lows = [band_share(y, 50, 500) for y in outs]
    assert max(lows) - min(lows) > 0.01  # each draw is a different curve
    assert all(band_share(y, 4000, 8000) > 0.01 for y in outs)  # a tilt, not a band limit


def test_channel_draws_every_kind() -> None:
    rng = np.random.default_rng(6)
    kinds = {perturb.channel(rng, white(7))[1] for _ in range(30)}
    assert kinds == set(perturb.CHANNELS)


def test_vocal_tract_warp_moves_formants_not_length() -> None:
    x = vowel()
    centroids = {a: perturb.spectral_centroid(perturb.warp_formants(x, a))
                 for a in (0.85, 1.0, 1.15)}
    assert centroids[0.85] < 0.95 * centroids[1.0] and centroids[1.15] > 1.05 * centroids[1.0]
    assert len(perturb.warp_formants(x, 1.1)) == len(x)
    assert perturb.warp_formants(x, 1.0) is x


def test_vocal_tract_warp_keeps_the_pitch() -> None:
    x = vowel(f0=200.0)
    out = perturb.warp_formants(x, 1.15)
    spectrum = np.abs(np.fft.rfft(out))
    harmonics = spectrum[np.arange(200, 4000, 200)]  # 1 Hz bins: every harmonic of 200 Hz
    between = spectrum[np.arange(300, 4000, 200)]
    assert np.median(harmonics) > 30 * np.median(between)


@pytest.mark.parametrize("semitones", [-4.0, 3.0, 12.0])
def test_pitch_shift_moves_pitch_and_keeps_duration(semitones: float) -> None:
    x = np.sin(2 * np.pi * 200 * np.arange(8000) / SR)
    out = perturb.pitch_shift(x, semitones)
    spectrum = np.abs(np.fft.rfft(out[1000:7000], SR))
    assert len(out) == len(x)
    assert np.argmax(spectrum) == pytest.approx(200 * 2 ** (semitones / 12), abs=3)


def test_time_stretch_changes_length_only() -> None:
    x = np.sin(2 * np.pi * 300 * np.arange(8000) / SR)
    out = perturb.time_stretch(x, 1.5)
    assert len(out) == 12000
    assert np.argmax(np.abs(np.fft.rfft(out[2000:10000], SR))) == pytest.approx(300, abs=3)


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_room_impulse_response_decays_in_rt60(rt60: float) -> None:
    rng = np.random.default_rng(8)
    room = rooms.random_room(rng, rt60, 0.5, 3.0)
    ir = rooms.room_impulse_response(rng, room)
    assert ir[0] == pytest.approx(1.0)  # the direct path, first and at unit gain
    assert np.abs(ir[1:]).max() < 1.0  # every reflection travels further
    assert rooms.decay_time(ir) == pytest.approx(rt60, rel=0.3)


def test_room_lengthens_the_decay_of_a_burst() -> None:
    rng = np.random.default_rng(9)
    burst = np.zeros(SR)
    burst[1000:1400] = rng.standard_normal(400)
    wet = acoustics.convolve(burst, rooms.room_impulse_response(
        rng, rooms.random_room(rng, 0.8, 1.0, 3.0)))
    after = slice(1400 + SR // 10, SR)  # from 100 ms after the burst ends
    assert np.sum(burst[after] ** 2) == 0.0
    assert np.sum(wet[after] ** 2) / np.sum(wet**2) > 0.01


def test_room_geometry_keeps_talker_and_microphone_inside() -> None:
    rng = np.random.default_rng(10)
    for _ in range(20):
        room = rooms.random_room(rng, 0.5, 0.3, 4.0)
        for point in (room.source, room.mic):
            assert all(0.5 - 1e-9 <= p <= s - 0.5 + 1e-9 for p, s in zip(point, room.size))


def test_more_absorption_for_a_shorter_reverberation() -> None:
    assert rooms.sabine_reflection((5, 4, 3), 0.3) < rooms.sabine_reflection((5, 4, 3), 1.0) < 1


def fake_context(tmp_path: Path) -> Context:
    """A context whose babble would be speech: the silence tests prove it is never used."""
    recipe = Recipe(per_class=3)
    return Context(tmp_path, recipe, {s: [] for s in recipe.splits()},
                   {s: [] for s in recipe.splits()})


@pytest.mark.parametrize("kind", dataset.NOISES)
def test_every_background_is_mixed_at_the_requested_snr(kind: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    monkeypatch.setattr(dataset, "babble_voices", lambda pool: [white(12)[:6000]] * 3)
    speech = np.zeros(SR)
    speech[4000:8000] = rng.standard_normal(4000)
    noise = dataset.background(rng, kind, fake_context(tmp_path), "train")
    assert len(noise) == SR and np.all(np.isfinite(noise))
    scaled = acoustics.scale_to_snr(speech, 4000, noise, 6.0)
    snr = 10 * np.log10(np.mean(speech[4000:8000] ** 2) / np.mean(scaled**2))
    assert snr == pytest.approx(6.0, abs=1e-6)


def test_silence_is_never_speech(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_speech(*args: object) -> None:
        raise AssertionError("_silence_ asked for speech")

    monkeypatch.setattr(dataset, "synthesize", no_speech)
    monkeypatch.setattr(dataset, "babble_voices", no_speech)
    ctx, kinds, levels = fake_context(tmp_path), set(), []
    for i in range(60):
        rng = np.random.default_rng(i)
        audio, row = dataset.render_silence(rng, Clip(i, dataset.SILENCE, "train"), ctx)
        assert audio.shape == (SR,) and np.abs(audio).max() <= 1.0
        assert row["speaker"] == row["word"] == row["family"] == ""
        kinds.add(row["noise"])
        levels.append(10 * np.log10(np.mean(audio**2) + 1e-20))
    assert kinds == set(dataset.SILENCE_SOURCES)  # tones, beeps, chords, clicks, noises...
    assert min(levels) < -80 and max(levels) > -25  # many levels, near-silence included


def test_noise_colours_tilt_as_named() -> None:
    rng = np.random.default_rng(0)
    low = {}
    for name, exponent in dataset.COLOURS.items():
        power = np.abs(np.fft.rfft(acoustics.coloured_noise(rng, SR, exponent))) ** 2
        low[name] = power[20:500].sum() / power.sum()  # share below 500 Hz
    assert low["white"] < low["pink"] < low["brown"]


def test_music_tones_and_beeps_are_tonal() -> None:
    rng = np.random.default_rng(13)
    for sound in (acoustics.music(rng, SR, percussion=False), acoustics.beeps(rng, SR),
                  acoustics.tone(rng, SR, 440.0)):
        spectrum = np.abs(np.fft.rfft(sound)) ** 2
        top = np.sort(spectrum)[::-1]
        assert top[:200].sum() / spectrum.sum() > 0.5  # energy in few lines, unlike noise
    noise = np.sort(np.abs(np.fft.rfft(white())) ** 2)[::-1]
    assert noise[:200].sum() / noise.sum() < 0.2


def test_clicks_are_brief() -> None:
    x = acoustics.clicks(np.random.default_rng(14), SR)
    loud = np.abs(x) > 0.1 * np.abs(x).max()
    assert loud.mean() < 0.1  # mostly quiet between clicks
