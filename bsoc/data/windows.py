"""Normalisation statistics and training windows for sequence models.

The network runs live from a zero state at whatever sample a stream starts with, and a
cell is rarely switched on at full charge. Training windows mirror that:

* *random windows* start anywhere in a cycle (SOC unknown to the network) with a zero
  state; the loss ignores their first ``warmup`` steps, the time any estimator needs to
  find its bearings from the voltage;
* *start windows* begin at a cycle's first sample, exactly like the "from start" use,
  and count from the first step.

A window is up to ``length`` samples long, so a ``length`` above the longest drive cycle
makes start windows whole cycles: SOC hours into a drive depends on the charge
moved since the start, which a network can only learn to integrate from windows that
long (the training loop steps through them in chunks, carrying the state). Cycles are
drawn with probability proportional to the part of them one window covers,
``min(length, cycle length)``: every sample of a cycle shorter than a window is equally
likely to be trained on, and a 40-hour C/20 test does not crowd out the drive cycles.
Lengths are in samples (datasets are 1 Hz by convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bsoc.data.schema import FEATURE_COLUMNS, Cycle
from bsoc.errors import DataValidationError

MIN_STD = 1e-3  # a feature constant in the training data (one temperature) is only centred


@dataclass(frozen=True)
class Normalisation:
    """Per-feature mean and standard deviation of the training split."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, cycles: list[Cycle]) -> Normalisation:
        if not cycles:
            raise DataValidationError("no cycles to compute normalisation statistics from",
                                      remedy="give the dataset a non-empty train split")
        features = np.concatenate([c.features().astype(np.float64) for c in cycles])
        std = features.std(axis=0)
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(tuple(features.mean(axis=0).tolist()), tuple(std.tolist()))

    def to_json(self) -> dict[str, Any]:
        return {"features": list(FEATURE_COLUMNS), "mean": list(self.mean), "std": list(self.std)}


@dataclass
class SequenceSet:
    """Cycles as arrays: features (T, 3) float32 in physical units, SOC (T,), time (T,) s."""

    features: list[np.ndarray]
    soc: list[np.ndarray]
    time_s: list[np.ndarray]
    names: list[str]

    @classmethod
    def from_cycles(cls, cycles: list[Cycle]) -> SequenceSet:
        return cls(
            features=[c.features() for c in cycles],
            soc=[c.soc().astype(np.float32) for c in cycles],
            time_s=[c.frame["time_s"].to_numpy(np.float64) for c in cycles],
            names=[c.meta.name for c in cycles],
        )

    def __len__(self) -> int:
        return len(self.features)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.soc])

    def tail(self, start_fraction: float) -> SequenceSet:
        """Every sequence from ``start_fraction`` of its length on (a cold start there)."""
        first = [int(start_fraction * len(s)) for s in self.soc]
        return SequenceSet(
            features=[f[k:] for f, k in zip(self.features, first)],
            soc=[s[k:] for s, k in zip(self.soc, first)],
            time_s=[t[k:] - t[k] for t, k in zip(self.time_s, first)],
            names=list(self.names),
        )

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All sequences zero-padded at the end: x (N, T_max, 3), y (N, T_max), mask (N, T_max).

        End padding never changes a causal network's outputs on the real samples.
        """
        length = int(self.lengths.max())
        x = np.zeros((len(self), length, self.features[0].shape[1]), np.float32)
        y = np.zeros((len(self), length), np.float32)
        mask = np.zeros((len(self), length), bool)
        for n, (feat, soc) in enumerate(zip(self.features, self.soc)):
            x[n, : len(soc)], y[n, : len(soc)], mask[n, : len(soc)] = feat, soc, True
        return x, y, mask


@dataclass(frozen=True)
class WindowPlan:
    """How training windows are cut: ``length`` samples, ``warmup`` not counted (random ones)."""

    length: int = 600
    warmup: int = 60
    from_start_fraction: float = 0.25
    # Random windows that must fit whole inside a cycle cover its last ``length`` samples
    # less and less towards the end (the last one by a single start position), which is
    # exactly where a discharge reaches its cut-off and relaxes; letting them run past the
    # end (padded, not counted) makes every counted sample as likely as one mid-cycle.
    cover_ends: bool = False

    def __post_init__(self) -> None:
        if self.length < 2 or not 0 <= self.warmup < self.length:
            raise DataValidationError(
                f"window length {self.length} / warm-up {self.warmup} are inconsistent",
                remedy="use length >= 2 and 0 <= warmup < length",
            )
        if not 0.0 <= self.from_start_fraction <= 1.0:
            raise DataValidationError("from_start_fraction must be within 0..1",
                                      remedy="pass a fraction such as 0.25")


def _cycle_weights(data: SequenceSet, plan: WindowPlan) -> np.ndarray:
    """How many samples one window takes from each cycle."""
    return np.minimum(data.lengths, plan.length).astype(np.float64)


def windows_to_cover(data: SequenceSet, plan: WindowPlan, samples: int | None = None) -> int:
    """How many windows hold, in expectation, ``samples`` samples (default: the whole set)."""
    covered = _cycle_weights(data, plan)
    mean_window = float((covered**2).sum() / covered.sum())
    wanted = int(data.lengths.sum()) if samples is None else samples
    return max(1, int(wanted // mean_window))


def sample_windows(
    data: SequenceSet, plan: WindowPlan, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` windows: x (N, L, 3), y (N, L), loss mask (N, L).

    Cycles shorter than the window give their whole length, padded and masked.
    """
    lengths = data.lengths
    weights = _cycle_weights(data, plan)
    cycles = rng.choice(len(data), size=count, p=weights / weights.sum())
    from_start = rng.random(count) < plan.from_start_fraction
    x = np.zeros((count, plan.length, data.features[0].shape[1]), np.float32)
    y = np.zeros((count, plan.length), np.float32)
    mask = np.zeros((count, plan.length), bool)
    for n, (cycle, at_start) in enumerate(zip(cycles, from_start)):
        total = int(lengths[cycle])
        # a cold start anywhere a full window fits (or, covering the ends, anywhere that
        # leaves a sample after the warm-up); in a cycle shorter than two windows, anywhere
        # in its first half, so that it still starts mid-cycle
        fits = total - plan.warmup - 1 if plan.cover_ends else total - plan.length
        latest = max(fits, total // 2)
        start = 0 if at_start else int(rng.integers(0, latest + 1))
        stop = min(start + plan.length, total)
        x[n, : stop - start] = data.features[cycle][start:stop]
        y[n, : stop - start] = data.soc[cycle][start:stop]
        mask[n, 0 if at_start else plan.warmup : stop - start] = True
    return x, y, mask


def window_extents(mask: np.ndarray) -> np.ndarray:
    """Per window, the samples up to its last counted one (what is after it is padding)."""
    last = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 0)


@dataclass
class Lanes:
    """Windows laid end to end in parallel lanes, cut into chunks: the batches of
    truncated back-propagation through time.

    Step ``s`` trains lane ``b`` on chunk ``offset[s, b]`` of window ``window[s, b]``
    (-1: the lane has run out), with the state carried from the lane's previous chunk
    unless that chunk is a window's first. Every batch so mixes windows of many cycles,
    as a batch of random short windows does. Each lane also starts at a random point of
    its sequence (its queue rotated, the cut window's first part moved to the end): lanes
    that all began with a window's first chunk would step in lockstep, every batch at the
    same time since the start (all near full charge, then all near empty), and the
    optimiser would chase that drift. The chunk a rotation cuts into starts from a zero
    state, a cold start, so its first ``warmup`` samples are not counted.
    """

    window: np.ndarray  # (S, B) int
    offset: np.ndarray  # (S, B) int
    restart: np.ndarray  # (S, B) bool: a zero state in the middle of a window
    chunk: int
    warmup: int

    @property
    def steps(self) -> int:
        return len(self.window)

    @classmethod
    def lay_out(cls, extents: np.ndarray, lanes: int, chunk: int, warmup: int,
                rng: np.random.Generator) -> Lanes:
        """Longest window first, each to the lane with the fewest chunks so far (so lanes end
        nearly together), then each lane's windows in random order, rotated at random."""
        chunks = np.maximum(1, -(-extents.astype(int) // chunk))
        order = rng.permutation(len(extents))
        order = order[np.argsort(-chunks[order], kind="stable")]
        assigned: list[list[int]] = [[] for _ in range(min(lanes, len(extents)))]
        load = np.zeros(len(assigned), int)
        for index in order:
            lane = int(np.argmin(load))
            assigned[lane].append(int(index))
            load[lane] += chunks[index]
        steps = int(load.max())
        window = np.full((steps, len(assigned)), -1)
        offset = np.zeros((steps, len(assigned)), int)
        restart = np.zeros((steps, len(assigned)), bool)
        for b, mine in enumerate(assigned):
            queue = [(index, k) for index in rng.permutation(mine) for k in range(chunks[index])]
            if not queue:
                continue
            turn = int(rng.integers(len(queue)))
            queue = queue[turn:] + queue[:turn]
            window[: len(queue), b], offset[: len(queue), b] = np.array(queue).T
            restart[0, b] = offset[0, b] > 0
        return cls(window, offset, restart, chunk, warmup)

    def batch(self, step: int, features: np.ndarray, soc: np.ndarray, mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step ``step``'s chunk of the (N, L, ...) window arrays as (B, chunk, ...), zero
        where a lane has run out or a window ends, and which lanes start from a zero state."""
        lanes = self.window.shape[1]
        x = np.zeros((lanes, self.chunk, features.shape[2]), features.dtype)
        y = np.zeros((lanes, self.chunk), soc.dtype)
        m = np.zeros((lanes, self.chunk), bool)
        for b, (index, k) in enumerate(zip(self.window[step], self.offset[step])):
            if index < 0:
                continue
            cut = slice(k * self.chunk, (k + 1) * self.chunk)
            piece = features[index, cut]
            x[b, : len(piece)], y[b, : len(piece)], m[b, : len(piece)] = (
                piece, soc[index, cut], mask[index, cut])
        m[self.restart[step], : self.warmup] = False
        starts = (self.offset[step] == 0) | (self.window[step] < 0) | self.restart[step]
        return x, y, m, starts
