"""The simulated backend's stream (SIMULATED): word chunks at the simulated pace, stoppable mid-way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from serving.backends import BackendResult, SimulatedBackend

BODY = {"messages": [{"role": "user", "content": "write a sorting function"}], "metadata": {"sim_category": "code"}}


def test_stream_yields_words_then_the_result(configs_dir: Path) -> None:
    backend = SimulatedBackend("small", str(configs_dir / "world.yaml"), time_scale=0.0)

    async def run() -> list[object]:
        return [item async for item in backend.stream(BODY, "code")]

    items = asyncio.run(run())
    words, result = items[:-1], items[-1]
    assert isinstance(result, BackendResult) and result.simulated and len(words) >= 5
    assert "".join(words) == result.text and result.text.startswith("[simulated small answer")  # type: ignore[arg-type]


def test_stream_waits_out_the_simulated_ttft_and_can_be_cancelled(configs_dir: Path) -> None:
    backend = SimulatedBackend("small", str(configs_dir / "world.yaml"), time_scale=1.0)
    body = {**BODY, "metadata": {**BODY["metadata"], "sim_latency_scale": 1000}}  # minutes of simulated decode

    async def run() -> bool:
        gen = backend.stream(body, "code")
        task = asyncio.ensure_future(gen.__anext__())  # still waiting for the simulated first token
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return task.cancelled()

    assert asyncio.run(run())  # cancelled inside the simulated wait, not answered
