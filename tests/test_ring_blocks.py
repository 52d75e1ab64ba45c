"""Ring attention's pieces and merge, and the sequence layouts, against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from implementations.ring_blocks import chunk_delta, merge, pieces
from implementations.sequence_layout import positions, shard, zigzag_lengths


def _mask_of_pieces(m: int, n: int, delta: int | None) -> torch.Tensor:
    """The visibility the pieces give, each key of each row counted once at most (else 2)."""
    seen = torch.zeros(m, n, dtype=torch.long)
    for p in pieces(m, n, delta):
        rows, keys = p.row1 - p.row0, p.key1 - p.key0
        assert rows > 0 and keys > 0, p
        sub = torch.ones(rows, keys, dtype=torch.long)
        if p.causal == "bottom_right":
            sub = torch.tril(sub, diagonal=keys - rows)
        seen[p.row0:p.row1, p.key0:p.key1] += sub
    return seen


@pytest.mark.parametrize("m,n", [(1, 1), (3, 7), (7, 3), (5, 5), (1, 9), (9, 1)])
def test_pieces_cover_the_mask_exactly(m: int, n: int) -> None:
    """Every delta from all-hidden to all-visible: the pieces' masks add up to j <= i + delta, once each."""
    for delta in [None, *range(-m - 2, n + 2)]:
        i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
        want = torch.ones(m, n, dtype=torch.long) if delta is None else (j <= i + delta).long()
        assert torch.equal(_mask_of_pieces(m, n, delta), want), (m, n, delta)


def test_chunk_delta_uses_global_offsets() -> None:
    assert chunk_delta(None, 10, 20, 3, 4) is None
    assert chunk_delta("top_left", 10, 20, 3, 4) == -1
    assert chunk_delta("bottom_right", 10, 20, 3, 4) == 9


def test_merge_equals_logsumexp_weights() -> None:
    """SMX-4 on two halves of a row set, empty (-inf) rows included, equals the one-shot result."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 10, generator=g, dtype=torch.float64)
    s[0] = float("-inf")
    s[1, :5] = float("-inf")
    v = torch.randn(10, 3, generator=g, dtype=torch.float64)
    out = torch.zeros(4, 3, dtype=torch.float64)
    lse = torch.full((4,), float("-inf"), dtype=torch.float64)
    for part in (slice(0, 5), slice(5, 10)):
        part_lse = torch.logsumexp(s[:, part], dim=-1)
        part_out = torch.nan_to_num(torch.softmax(s[:, part], dim=-1)) @ v[part]
        merge(out, lse, part_out, part_lse)
    assert torch.allclose(out[1:], torch.softmax(s[1:], dim=-1) @ v, atol=1e-12)
    assert torch.equal(out[0], torch.zeros(3, dtype=torch.float64)) and lse[0] == float("-inf")
    assert torch.allclose(lse[1:], torch.logsumexp(s[1:], dim=-1), atol=1e-12)


@pytest.mark.parametrize("S,world", [(8, 2), (13, 2), (17, 4), (8, 4), (64, 1)])
def test_zigzag_shards_partition_the_sequence(S: int, world: int) -> None:
    """The ranks' positions cover 0..S-1 once each."""
    lengths = zigzag_lengths(S, world)
    found = torch.cat([positions("zigzag", lengths, r) for r in range(world)])
    assert sorted(found.tolist()) == list(range(S))


def test_zigzag_chunks_by_hand() -> None:
    """S = 13 over 2 ranks: chunks of 4, 3, 3, 3; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2."""
    lengths = zigzag_lengths(13, 2)
    assert lengths == [7, 6]
    assert positions("zigzag", lengths, 0).tolist() == [0, 1, 2, 3, 10, 11, 12]
    assert positions("zigzag", lengths, 1).tolist() == [4, 5, 6, 7, 8, 9]


def test_shard_takes_the_positions() -> None:
    x = torch.arange(2 * 3 * 11).reshape(1, 2, 11, 3)
    for layout, lengths in (("contiguous", [2, 6, 3]), ("zigzag", zigzag_lengths(11, 3))):
        for r in range(3):
            assert torch.equal(shard(x, layout, lengths, r), x[:, :, positions(layout, lengths, r)])


def test_contiguous_positions_follow_rank_order() -> None:
    lengths = [3, 1, 4]
    assert list(itertools.chain(*(positions("contiguous", lengths, r).tolist() for r in range(3)))) == list(range(8))
