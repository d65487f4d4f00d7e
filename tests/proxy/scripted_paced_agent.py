"""Scripted paced agents for the soak benchmark and load tests (never a stand-in for llama.cpp in
a feature test): the scripted fast agent's protocol and frames, but each request waits
`first_token_delay` before its first ContentToken and `token_interval` between tokens, so
requests hold their slots for a known time and time to first token minus that delay is the
time a request spent in the balancer (buffer wait plus relay).

Run several in one process: `python -m tests.proxy.scripted_paced_agent --management-addr HOST:PORT --agents 8`.
"""

from __future__ import annotations

import argparse

import attrs
import trio

from tests.proxy.scripted_fast_agent import (
    ScriptedFastAgent,
    done_message,
    token_message,
)


@attrs.define(eq=False)
class ScriptedPacedAgent(ScriptedFastAgent):
    first_token_delay: float = 0.05
    token_interval: float = 0.05
    # Every request keeps its own pace, so each token goes as its own frame.
    batching: bool = False

    async def _generate(self, request_id: str) -> None:
        assert self._ws is not None
        frame = self._encode(token_message(request_id, self.token_text))
        sent = 0
        await trio.sleep(self.first_token_delay)
        while sent < self.tokens and request_id not in self._stopped:
            if sent:
                await trio.sleep(self.token_interval)
            await self._write(frame)
            sent += 1
        self._stopped.discard(request_id)
        await self._ws.send_message(done_message(request_id, sent))


async def run_agents(agents: list[ScriptedPacedAgent]) -> None:
    async with trio.open_nursery() as nursery:
        for agent in agents:
            await nursery.start(agent.run)
        print("ready", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted paced agents: ContentTokens at a set pace")
    parser.add_argument("--management-addr", required=True, help="balancer management HOST:PORT")
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--slots", type=int, default=32, help="slots per agent")
    parser.add_argument("--tokens", type=int, default=20, help="ContentTokens per request before Done")
    parser.add_argument("--first-token-delay", type=float, default=0.05, help="seconds before the first token")
    parser.add_argument("--token-interval", type=float, default=0.05, help="seconds between two tokens")
    parser.add_argument("--token-bytes", type=int, default=3, help="length of each ContentToken's text")
    args = parser.parse_args(argv)
    agents = [
        ScriptedPacedAgent(
            args.management_addr,
            slots=args.slots,
            tokens=args.tokens,
            token_text="t" * args.token_bytes,
            name=f"scripted-paced-{index}",
            first_token_delay=args.first_token_delay,
            token_interval=args.token_interval,
        )
        for index in range(args.agents)
    ]
    trio.run(run_agents, agents)


if __name__ == "__main__":
    main()
