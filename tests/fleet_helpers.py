"""Test support for the fleet: a real nats-server, workers in threads or processes, a client.

The NATS server is the packaged binary, started by :class:`bsoc.fleet.nats_server.NatsCluster`
on free loopback ports in a temporary folder and stopped afterwards. Worker processes run
``tests/test_serve_helpers.py fleet worker ...`` (``bsoc`` with the test estimator
registered) and keep this process's ``PYTHONPATH``, so they run the code under test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bsoc.fleet.connection import NatsTarget, connect
from bsoc.fleet.queries import ask_fleet
from bsoc.fleet.subjects import DEAD_LETTER, DEAD_STREAM, REPLY_HEADER, SOC_OUT, samples_subject
from bsoc.fleet.context import WorkerConfig
from bsoc.fleet.worker import Worker
from bsoc.serve.service import describe_model
from test_serve_helpers import HERE, as_json

HELPER_SCRIPT = HERE / "test_serve_helpers.py"


def child_env() -> dict[str, str]:
    """This environment, with the tests folder added to (not replacing) PYTHONPATH."""
    paths = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}


def run_bsoc(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER_SCRIPT), *args], env=child_env(),
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


class WorkerProcess:
    """``bsoc fleet worker`` as a real process, to be killed with SIGKILL or stopped with SIGTERM."""

    def __init__(self, model: Path, url: str, *options: str, log: Path) -> None:
        self.command = [sys.executable, str(HELPER_SCRIPT), "fleet", "worker", "--model",
                        str(model), "--nats", url, *options]  # fmt: skip
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, env=child_env(), stdout=log, stderr=log)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        if self.alive():
            self.kill()


class ThreadWorker:
    """A :class:`Worker` on its own event loop in a thread (no model loading per test)."""

    def __init__(self, estimator: Any, url: str, *, user: str | None = None,
                 password: str | None = None, **config: Any) -> None:  # fmt: skip
        target = NatsTarget(url, user, password)
        self.worker = Worker(estimator, describe_model(estimator, None),
                             WorkerConfig(target=target, **config))  # fmt: skip
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            started = asyncio.Event()
            task = asyncio.create_task(self.worker.run(started))
            waiting = asyncio.create_task(started.wait())
            await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if task.done():
                task.result()  # raises what stopped the worker before it started
            self.ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as error:  # surfaced by __exit__
            self.error = error
            self.ready.set()

    def __enter__(self) -> ThreadWorker:
        self.thread.start()
        if not self.ready.wait(90):
            raise AssertionError(f"worker did not start in 90 s; it waits in:\n{self._where()}")
        if self.error is not None:
            raise self.error
        return self

    def _where(self) -> str:
        """The stacks of the worker's tasks (read from outside its loop: a diagnostic only)."""
        loop = getattr(self, "loop", None)
        if loop is None:
            return "its event loop never started"
        lines = io.StringIO()
        for task in list(asyncio.all_tasks(loop)):
            task.print_stack(file=lines)
        return lines.getvalue()

    def __exit__(self, *_: Any) -> None:
        self.loop.call_soon_threadsafe(self.worker.request_stop)
        self.thread.join(timeout=60)


def fleet_status(url: str, partitions: int) -> tuple[list[dict], list[int]]:
    return asyncio.run(ask_fleet(NatsTarget(url), partitions))


def wait_until_owned(url: str, partitions: int, timeout_s: float = 300.0) -> list[dict]:
    """Until every partition has a live owner that has started it; returns the answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answers, missing = fleet_status(url, partitions)
        if not missing:
            return answers
        time.sleep(0.3)
    raise TimeoutError(f"partitions {missing} still have no owner")


class AnswerLog:
    """Every answer the workers publish on ``bsoc.soc.>``, collected in a background thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[dict] = []
        self.ready = threading.Event()
        self.stopping: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        nc = await connect(NatsTarget(self.url), "test-answers")

        async def keep(message: Any) -> None:
            self.answers.append(json.loads(message.data))

        await nc.subscribe(f"{SOC_OUT}.>", cb=keep)
        await nc.flush()
        self.ready.set()
        await self.stopping.wait()
        await nc.drain()

    def __enter__(self) -> AnswerLog:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *_: Any) -> None:
        assert self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(timeout=30)

    def wait_for(self, count: int, timeout_s: float = 120.0) -> None:
        """Until ``count`` distinct log sequences have been answered."""
        deadline = time.monotonic() + timeout_s
        while len({a["seq"] for a in list(self.answers)}) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len({a['seq'] for a in self.answers})} of {count} answered")
            time.sleep(0.05)


def publish(url: str, messages: list[tuple[str, Any]], reply: bool = False) -> list[dict] | None:
    """Publish (stream id, JSON-able body) messages in order; with ``reply``, wait for answers."""

    async def send() -> list[dict] | None:
        nc = await connect(NatsTarget(url), "test-publisher")
        inbox, answers = nc.new_inbox(), {}
        done = asyncio.Event()

        async def keep(message: Any) -> None:
            answers[message.subject] = json.loads(message.data)
            if len(answers) == len(messages):
                done.set()

        if reply:
            await nc.subscribe(f"{inbox}.*", cb=keep)
        js = nc.jetstream()
        for k, (stream_id, body) in enumerate(messages):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {REPLY_HEADER: f"{inbox}.{k}"} if reply else None
            await js.publish(samples_subject(stream_id), data, headers=headers)
        if reply:
            await asyncio.wait_for(done.wait(), 60)
        await nc.close()
        return [answers[f"{inbox}.{k}"] for k in range(len(messages))] if reply else None

    return asyncio.run(send())


def interleaved(streams: dict[str, np.ndarray], lo: int, hi: int) -> list[tuple[str, Any]]:
    """One message per sample of rows lo..hi of every stream, streams interleaved in time."""
    return [(sid, as_json(rows[k : k + 1])[0]) for k in range(lo, hi) for sid, rows in streams.items()]


def dead_letters(url: str, expected: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The dead-letter stream once it holds at least ``expected`` messages (in stored order):
    subject, kind, reason and log sequence from the headers, and the body as it came."""

    async def read() -> list[dict[str, Any]]:
        nc = await connect(NatsTarget(url), "test-dead")
        js, deadline = nc.jetstream(), time.monotonic() + timeout_s
        while (count := (await js.stream_info(DEAD_STREAM)).state.messages) < expected:
            assert time.monotonic() < deadline, f"{count} of {expected} dead letters"
            await asyncio.sleep(0.1)
        sub = await js.subscribe(f"{DEAD_LETTER}.*", stream=DEAD_STREAM)
        letters = []
        for _ in range(count):
            message = await sub.next_msg(timeout=5)
            headers = message.headers or {}
            letters.append({"subject": message.subject, "error": headers.get("Bsoc-Error"),
                            "reason": headers.get("Bsoc-Reason"), "data": message.data,
                            "seq": int(headers.get("Bsoc-Sequence", 0))})  # fmt: skip
        await nc.close()
        return letters

    return asyncio.run(read())
