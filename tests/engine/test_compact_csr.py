"""The compact in-memory sparse CSR (segsrv.engine.compact_csr): the same rows' features as the snapshot's
CSR, built only where it fits, kept per universe, and the rows method's counts through it (or without it)
equal to the oracle's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segsrv import _kernels
from segsrv.engine import compact_csr as compact_module
from segsrv.engine.compact_csr import MAX_WITHIN, compact_csr, compact_sparse_csr
from segsrv.engine.relate import count_sparse_by_rows

from support import as_bits, oracle_masks


def starts_of(compact) -> np.ndarray:
    """Each row's first entry (and the end of the last), from the compact form."""
    rows = np.arange(len(compact.within))
    return compact.block_base[rows // _kernels.COMPACT_BLOCK_ROWS] + compact.within.astype(np.int64)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=400), st.sampled_from([1, 300, 1 << 16, (1 << 16) + 1]),
       st.integers(0, 2 ** 32 - 1))
def test_compact_form_holds_the_same_rows(lengths, n_features, seed):
    """Row pointers rebuilt from the block bases and offsets are the CSR's; feature ids the same, uint16 up to
    65,536 features, else the CSR's own uint32 array (not copied)."""
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(0, n_features, int(indptr[-1])).astype(np.uint32)
    compact = compact_csr(indptr, indices, n_features)
    assert compact.block_base.dtype == np.int64 and compact.within.dtype == np.uint16
    assert len(compact.block_base) == (len(indptr) - 1) // _kernels.COMPACT_BLOCK_ROWS + 1
    np.testing.assert_array_equal(starts_of(compact), indptr)
    if n_features <= 1 << 16:
        assert compact.indices.dtype == np.uint16
    else:
        assert compact.indices is indices
    np.testing.assert_array_equal(compact.indices.astype(np.uint32), indices)


def test_a_block_past_65535_entries_keeps_the_snapshot_form():
    """A row starting more than 65,535 entries into its block of 64 rows: no compact form. The block's last
    row may hold any number (its end is the next block's base)."""
    def form(lengths: dict[int, int]):
        counts = np.zeros(130, dtype=np.int64)
        for row, n in lengths.items():
            counts[row] = n
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return compact_csr(indptr, np.zeros(int(indptr[-1]), np.uint32), 5)

    assert form({62: MAX_WITHIN}) is not None  # row 63 starts at 65,535 of block 0
    assert form({62: MAX_WITHIN + 1}) is None
    assert form({0: 1, 61: MAX_WITHIN}) is None
    assert form({63: 3 * MAX_WITHIN}) is not None  # block 0's last row: block 1's base moves
    assert form({64: MAX_WITHIN, 127: 5}) is not None  # block 1: row 127 starts at 65,535


def test_kept_per_universe_and_none_without_a_sparse_csr(petnord_rare_snapshot, petnord_snapshot):
    u = petnord_rare_snapshot.universe("customers")
    first = compact_sparse_csr(u)
    assert first is not None and compact_sparse_csr(u) is first
    np.testing.assert_array_equal(starts_of(first), np.asarray(u.sparse_csr_indptr))
    plain = petnord_snapshot.universe("customers")
    assert plain.sparse_csr_indices is None and compact_sparse_csr(plain) is None


@pytest.mark.parametrize("universe_name", ["customers", "orders"])
@pytest.mark.parametrize("compact", [True, False])
def test_rows_method_through_either_form_is_the_oracles(petnord_rare_snapshot, oracle, monkeypatch, universe_name,
                                                        compact):
    """count_sparse_by_rows through the compact form, and through the snapshot's CSR where there is none,
    equals the oracle's counts, below and above half the rows."""
    u = petnord_rare_snapshot.universe(universe_name)
    masks = oracle_masks(u, oracle.universe(universe_name))
    if not compact:
        monkeypatch.setattr(compact_module, "_COMPACT", type(compact_module._COMPACT)())
        monkeypatch.setattr(compact_module, "compact_csr", lambda *args: None)
    assert (compact_sparse_csr(u) is not None) == compact
    sparse = np.asarray(u.sparse_features, dtype=np.int64)
    rng = np.random.default_rng(7)
    for density in (0.0, 0.05, 0.3, 0.5, 0.7, 1.0):
        cond = rng.random(u.n_rows) < density
        got = count_sparse_by_rows(u, as_bits(cond), int(cond.sum()), sparse)
        np.testing.assert_array_equal(got, (masks[sparse] & cond).sum(axis=1), err_msg=f"density {density}")
