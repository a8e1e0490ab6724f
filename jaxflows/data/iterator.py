"""Deterministic, per-host-sharded, prefetched batches: the batch of step s depends only on (seed, s).

Each epoch is a permutation of the split drawn from (seed, epoch); global batch s is a contiguous
slice of it and host p takes its p-th share. Resuming at step s therefore resumes the data stream
exactly, with no iterator state to checkpoint.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from jaxflows.core.errors import InvalidArgumentError
from jaxflows.data.source import Source
from jaxflows.data.validation import validate_batch


def batch_indices(
    num_examples: int, global_batch: int, step: int, seed: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
    """Indices of this host's share of global batch `step` (epochs drop their last partial batch)."""
    if global_batch % process_count:
        raise InvalidArgumentError(f"global batch {global_batch} is not divisible by {process_count} hosts")
    per_epoch = num_examples // global_batch
    if per_epoch < 1:
        raise InvalidArgumentError(f"batch size {global_batch} exceeds the {num_examples} training examples")
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    chunk = np.sort(order[position * global_batch : (position + 1) * global_batch])
    local = global_batch // process_count  # the global batch is the same for any number of hosts
    return chunk[process_index * local : (process_index + 1) * local]


class BatchIterator:
    """Yields (step, uint8 NHWC host batch) from `start_step` on, validated, with a prefetch thread;
    with `labels` the batch is (pixels, int32 labels) (a class-conditional flow's input)."""

    def __init__(
        self,
        source: Source,
        global_batch: int,
        num_bins: int,
        seed: int = 0,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
        labels: bool = False,
    ):
        self.source, self.global_batch, self.num_bins = source, global_batch, num_bins
        self.seed, self.step = seed, start_step
        self.process_index, self.process_count = process_index, process_count
        self.prefetch, self.labels = prefetch, labels
        batch_indices(len(source), global_batch, 0, seed, process_index, process_count)  # validates sizes

    def batch(self, step: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        idx = batch_indices(
            len(self.source), self.global_batch, step, self.seed, self.process_index, self.process_count
        )
        pixels = validate_batch(self.source[idx], self.num_bins, name=f"training batch {step}")
        return (pixels, self.source.labels(idx)) if self.labels else pixels

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.prefetch <= 0:
            while True:
                yield self.step, self.batch(self.step)
                self.step += 1
        buffer: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce(step: int) -> None:
            while not stop.is_set():
                try:
                    item = (step, self.batch(step), None)
                except Exception as error:  # surfaced in the consumer
                    item = (step, None, error)
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item[2] is not None:
                    return
                step += 1

        thread = threading.Thread(target=produce, args=(self.step,), daemon=True)
        thread.start()
        try:
            while True:
                step, pixels, error = buffer.get()
                if error is not None:
                    raise error
                self.step = step + 1
                yield step, pixels
        finally:
            stop.set()
