"""What the balancer assumes one agent's prompt cache holds: the prefix chains it last sent
there (the approximate design of docs/architecture.md, "Cache-aware routing").

The model follows the agents' caches: a slot keeps the KV of its last request, a new request
takes the free slot sharing its longest prefix, and our agents keep the states their slots
give up in a prompt state cache, least recently used out first. So an agent holds its most
recently sent chains, as many as it has slots plus the states it reports holding
(`AgentController.prefix_capacity`); a chain that extends one already held replaces it (the
agent reuses that slot or state), and older chains are forgotten first.
A request that did not finish normally (cancelled, failed) dropped its KV on our agents, so
its chain is forgotten at once.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from paddler_trio.proxy.prefix_chain import PrefixChain

class AgentPrefixes:
    """The chains one agent is assumed to hold, least recently sent first."""

    def __init__(self) -> None:
        # Keyed by each chain's last link.
        self._chains: OrderedDict[bytes, PrefixChain] = OrderedDict()
        # How many held chains contain each link: a link matches while its count is above zero.
        self._links: Counter[bytes] = Counter()

    def __len__(self) -> int:
        return len(self._chains)

    def matched_characters(self, chain: PrefixChain) -> int:
        """How much of `chain`'s request the agent is assumed to hold, in characters."""
        for index in range(len(chain.links) - 1, -1, -1):
            if self._links[chain.links[index]]:
                return chain.ends[index]
        return 0

    def record(self, chain: PrefixChain, capacity: int) -> None:
        """`chain` was just sent to the agent, which keeps `capacity` prompts cached."""
        if not chain.links:
            return
        for link in chain.links[:-1]:
            self._drop(link)  # a held prefix of this chain: its slot now holds this chain
        last = chain.links[-1]
        if last in self._chains:
            self._chains.move_to_end(last)
        else:
            self._chains[last] = chain
            self._links.update(chain.links)
        while len(self._chains) > capacity:
            self._drop(next(iter(self._chains)))

    def forget(self, chain: PrefixChain) -> None:
        """The agent dropped the KV of `chain`'s request."""
        if chain.links:
            self._drop(chain.links[-1])

    def clear(self) -> None:
        self._chains.clear()
        self._links.clear()

    def _drop(self, last_link: bytes) -> None:
        chain = self._chains.pop(last_link, None)
        if chain is None:
            return
        self._links.subtract(chain.links)
        for link in chain.links:
            if self._links[link] <= 0:
                del self._links[link]
