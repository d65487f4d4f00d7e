"""Paddler's `chunk_evenly_with_cap` (spec 2.6)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paddler_trio.proxy.embedding_batch_chunks import chunk_evenly_with_cap


def test_no_documents_no_chunks() -> None:
    assert chunk_evenly_with_cap([], agent_count=3, cap=256) == []


def test_one_chunk_per_agent_when_under_the_cap() -> None:
    assert chunk_evenly_with_cap(list(range(7)), agent_count=3, cap=256) == [[0, 1, 2], [3, 4], [5, 6]]


def test_never_more_chunks_than_documents() -> None:
    assert chunk_evenly_with_cap([1, 2], agent_count=5, cap=256) == [[1], [2]]


def test_the_cap_adds_chunks_beyond_the_agent_count() -> None:
    chunks = chunk_evenly_with_cap(list(range(10)), agent_count=1, cap=3)
    assert [len(chunk) for chunk in chunks] == [3, 3, 2, 2]


@given(st.integers(0, 500), st.integers(0, 8), st.integers(1, 64))
def test_chunks_keep_order_and_are_even(documents: int, agents: int, cap: int) -> None:
    items = list(range(documents))
    chunks = chunk_evenly_with_cap(items, agent_count=agents, cap=cap)
    assert [item for chunk in chunks for item in chunk] == items
    if documents:
        sizes = [len(chunk) for chunk in chunks]
        assert len(chunks) == min(documents, max(agents, -(-documents // cap)))
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)
