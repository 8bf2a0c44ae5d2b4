"""Hole batches sampled in worker processes, so a GPU never waits on the Python sampler.

`HoleSampler.sample` is plain Python over token arrays: 64 sequences x 32 holes take ~0.2-0.4 s
of one core, about what a GPU step on the small model takes. With `workers > 0` the batches are
made ahead by that many spawned processes (each with its own `TokenData` and sampler, one thread)
and the training loop only moves them to the device.

Batch k is drawn from its own RNG, seeded by (run seed, k): the same batches whatever the worker
count, and `train --resume` continues the stream at its step. (This is another stream than the
in-process path, which draws from the run's one RNG.)
"""

from __future__ import annotations

import multiprocessing
import os
import random
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import msgspec
import torch

from .holes import HoleBatch

_WORKER: dict = {}


def batch_rng(seed: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + step)


def _start(shards: str, data: dict) -> None:
    from transformers import AutoTokenizer

    from .loop import DataConfig, hole_sampler
    from .shards import TokenData

    torch.set_num_threads(1)
    config = msgspec.convert(data, DataConfig)
    _WORKER["data"] = TokenData(Path(shards), config.language_weights)
    _WORKER["sampler"] = hole_sampler(config, AutoTokenizer.from_pretrained(shards))


def sample_batch(sampler, token_data, seed: int, step: int, batch_size: int) -> HoleBatch:
    """Batch `step` of the stream (what a worker computes; also callable in process)."""
    rng = batch_rng(seed, step)
    return sampler.sample(token_data.draw(rng, batch_size), rng)


def _sample(seed: int, step: int, batch_size: int) -> HoleBatch:
    return sample_batch(_WORKER["sampler"], _WORKER["data"], seed, step, batch_size)


class BatchWorkers:
    """Batches first_step, first_step + 1, ... in order, `depth` of them in flight."""

    def __init__(self, workers: int, shards: Path, data, *, seed: int, batch_size: int, first_step: int,
                 depth: int | None = None):
        self.seed, self.batch_size, self.next_step = seed, batch_size, first_step
        self.depth = depth or 2 * workers
        # spawn, not fork: the parent may hold a CUDA context and OpenMP threads
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start, initargs=(str(shards), msgspec.to_builtins(data)))
        self.pending: deque[Future] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self.pending) < self.depth:
            self.pending.append(self.pool.submit(_sample, self.seed, self.next_step, self.batch_size))
            self.next_step += 1

    def next(self) -> HoleBatch:
        batch = self.pending.popleft().result()
        self._fill()
        return batch

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


def default_workers(device: str, requested: int | None) -> int:
    """`requested` if given; else none on a CPU (workers would take the training's cores) and up to
    8 where a GPU trains, leaving two cores to the training process."""
    if requested is not None:
        return max(0, requested)
    if not device.startswith("cuda"):
        return 0
    return max(1, min(8, (os.cpu_count() or 4) - 2))
