"""Uploads that arrive together embedded in one forward pass, as model servers batch requests."""

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from fastapi.concurrency import run_in_threadpool


class Batcher:
    """Embeds single images arriving concurrently in shared forward passes, as model servers batch requests.

    A batch starts at once when no other upload is on its way (`incoming`: being read or decoded), so a lone
    client never waits; otherwise the first image waits at most `max_wait` seconds for the others, up to
    `max_batch`. Images that arrive during a forward pass form the next batch.
    """

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait: float) -> None:
        self._embed = embed
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self._incoming = 0
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around reading and decoding one upload: the batcher waits for it rather than start without it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (dim,) float32, unnormalized."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((pixels, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + self._max_wait
            while len(items) < self._max_batch and (self._incoming or not self._queue.empty()):
                if (left := deadline - loop.time()) <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            try:
                vectors = await run_in_threadpool(self._embed, np.stack([pixels for pixels, _ in items]))
            except Exception as e:  # noqa: BLE001 - handed to every waiting request instead
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), vector in zip(items, vectors):
                if not future.done():
                    future.set_result(vector)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
