"""Simulated rooms: a shoebox room impulse response by the image-source method (Allen &
Berkley 1979) for the early reflections, with a noise tail for the late reverberation, the
hybrid that room simulators use because images grow as the cube of the reflection order.

Pure numpy, seeded by the caller, at the dataset's 16 kHz.
"""

from typing import NamedTuple

import numpy as np

from service.train.acoustics import SAMPLE_RATE

SPEED_OF_SOUND = 343.0
EARLY_S = 0.06  # images up to this delay; past it, the statistical tail


class Room(NamedTuple):
    size: tuple[float, float, float]  # metres
    source: tuple[float, float, float]
    mic: tuple[float, float, float]
    rt60: float  # seconds, the target of the Sabine absorption and of the tail


def sabine_reflection(size: tuple[float, float, float], rt60: float) -> float:
    """Wall pressure reflection coefficient that gives rt60 by Sabine's formula."""
    lx, ly, lz = size
    volume, surface = lx * ly * lz, 2 * (lx * ly + lx * lz + ly * lz)
    absorption = min(0.161 * volume / (surface * rt60), 0.99)
    return float(np.sqrt(1 - absorption))


def random_room(rng: np.random.Generator, rt60: float, distance_min: float,
                distance_max: float) -> Room:
    """A room 3x3x2.4 to 10x8x4 m, talker and microphone >= 0.5 m from every wall, at a
    distance drawn from [distance_min, distance_max] where the room allows it."""
    size = (rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 4))
    low, high = np.full(3, 0.5), np.array(size) - 0.5
    mic = rng.uniform(low, high)
    mic[2] = rng.uniform(0.7, min(1.8, high[2]))  # a desk or a hand
    source = mic
    for _ in range(20):
        direction = rng.standard_normal(3)
        direction[2] *= 0.3
        source = mic + direction / np.linalg.norm(direction) * rng.uniform(distance_min,
                                                                            distance_max)
        if np.all(source >= low) and np.all(source <= high):
            break
    source = np.clip(source, low, high)
    return Room(tuple(map(float, size)), tuple(map(float, source)), tuple(map(float, mic)),
                float(rt60))


def image_sources(room: Room, max_delay_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(delays in seconds, amplitudes) of every image source within max_delay_s."""
    size, src, mic = np.array(room.size), np.array(room.source), np.array(room.mic)
    beta = sabine_reflection(room.size, room.rt60)
    reach = SPEED_OF_SOUND * max_delay_s
    axes = []
    for d in range(3):  # along each axis: image coordinate and reflection count
        n = np.arange(-int(np.ceil(reach / size[d])) - 1, int(np.ceil(reach / size[d])) + 2)
        coords = np.concatenate([2 * n * size[d] + src[d], 2 * n * size[d] - src[d]])
        bounces = np.concatenate([np.abs(2 * n), np.abs(2 * n - 1)])
        keep = np.abs(coords - mic[d]) <= reach
        axes.append((coords[keep] - mic[d], bounces[keep]))
    (dx, bx), (dy, by), (dz, bz) = axes
    dist = np.sqrt(dx[:, None, None] ** 2 + dy[None, :, None] ** 2 + dz[None, None, :] ** 2)
    order = bx[:, None, None] + by[None, :, None] + bz[None, None, :]
    keep = dist <= reach
    dist, order = dist[keep], order[keep]
    return dist / SPEED_OF_SOUND, beta**order / np.maximum(dist, 0.1)


def room_impulse_response(rng: np.random.Generator, room: Room) -> np.ndarray:
    """Early images (fractional delays, linear interpolation) then a Gaussian tail falling
    60 dB in rt60, matched to the images' energy where it takes over. Peak-normalised direct
    path: the direct sound arrives at sample 0 with amplitude 1."""
    delays, amps = image_sources(room, EARLY_S)
    first = delays.min()
    amps = amps / amps[np.argmin(delays)]
    length = int((first + max(room.rt60, EARLY_S + 0.01)) * SAMPLE_RATE) + 2
    ir = np.zeros(length)
    pos = (delays - first) * SAMPLE_RATE
    base = np.floor(pos).astype(int)
    frac = pos - base
    np.add.at(ir, base, amps * (1 - frac))
    np.add.at(ir, base + 1, amps * frac)
    start = int((EARLY_S - first) * SAMPLE_RATE)
    if start < length - 1:
        window = ir[max(start - int(0.02 * SAMPLE_RATE), 1):start]
        level = np.sqrt(np.mean(window**2)) if window.size else 0.0
        t = np.arange(length - start) / SAMPLE_RATE
        ir[start:] = rng.standard_normal(t.size) * level * np.exp(-6.908 * t / room.rt60)
    return ir


def decay_time(ir: np.ndarray, drop_db: float = 20.0) -> float:
    """RT60 estimated from the Schroeder backward integral: the time to fall from -5 dB to
    -5-drop_db, scaled to 60 dB (T20 for drop_db=20)."""
    energy = np.cumsum(ir[::-1] ** 2)[::-1]
    curve = 10 * np.log10(energy / energy[0] + 1e-30)
    start = np.argmax(curve <= -5)
    stop = np.argmax(curve <= -5 - drop_db)
    return float((stop - start) / SAMPLE_RATE * 60 / drop_db)
