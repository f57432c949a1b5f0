"""Profile of a ~100k-member segment against the bytes it must read (issue 16, item 2).

Over the demo shop's customers (--customers, default 1M; bench/common.py's cached snapshot): the
segment is the feature whose row count is closest to --members (default 100,000; within 20%). The call is the service's
Profile as the server makes it (SegmentationService with the server's default privacy floor, one
kernel thread as `segsrv serve` runs them), every field but the identifier-like ones (the default),
the median of --repeat calls after one warm-up (the population's numeric statistics are cached per
snapshot, as in a server).

Counted bytes, what any implementation over the snapshot's indexes must read:
  * the segment's bitset, and each profiled value's dense row or sparse ids under the scan plan
    (Relate's "counted bytes"; bench/grpc_relate.py), or the segment's rows of the CSR index when
    count_features picks the histogram plan (the cheaper estimate); printed beside, the ratio against the
    bytes of the methods chosen, where the scan's rows method reads the listed rows of the sparse CSR
    instead of the rare features' ids
  * per numeric field, its value at each member row (8 bytes each) and the members' row ids (4 bytes
    each, listed once)
The floor is those bytes at the bandwidth of segsrv._kernels.read_bandwidth_probe (one thread, 256 MB,
best of 5); the target is Profile <= 2x its floor. Printed also: the time of the counts alone
(count_features) and of the numeric summaries, to say where the rest goes.

    python bench/profile_segment.py [--customers 1000000] [--members 100000] [--repeat 15]
"""

from __future__ import annotations

import argparse

import numpy as np

from common import cpu_model, demo_snapshot, median_ms, sparse_bytes, write_result
from grpc_relate import probed_bandwidth

from segsrv import _kernels
from segsrv.engine.conditions import evaluate
from segsrv.engine.fields import identifier_like_fields, select_fields
from segsrv.engine.privacy import DEFAULT_PRIVACY_K
from segsrv.engine.profile import field_codes, histogram_domain, segment_numeric_stats
from segsrv.engine.relate import count_features, feature_layout
from segsrv.ops.conditions import Term
from segsrv.ops.profile import ProfileQuery
from segsrv.service import OneSnapshot, SegmentationService
from segsrv.snapshot.reader import open_snapshot

TARGET = 2.0


def pick_segment(universe, members: int) -> Term:
    """The feature whose rows number closest to `members` (within 20%, else SystemExit)."""
    counts = np.asarray(universe.feature_count, dtype=np.int64)
    best = int(np.argmin(np.abs(counts - members)))
    if abs(int(counts[best]) - members) > 0.2 * members:
        raise SystemExit(f"no feature of {universe.name} holds {members:,} rows within 20% "
                         f"(closest: {int(counts[best]):,}); choose another --members")
    return Term(*universe.feature_name(best))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    _kernels.set_num_threads(1)  # as `segsrv serve` runs its kernels
    root = demo_snapshot(args.customers)
    snap = open_snapshot(root / "demo")
    u = snap.universe("customers")
    cond = pick_segment(u, args.members)
    bits = evaluate(snap, u, cond)
    n_s = int(_kernels.popcount(bits))
    service = SegmentationService(OneSnapshot(snap), privacy_k=DEFAULT_PRIVACY_K)
    query = ProfileQuery(segment=cond, universe="customers")
    result = service.profile(ProfileQuery(segment=cond, universe="customers"))

    names = select_fields(u, None, set(identifier_like_fields(u)), key="fields")
    fids = np.concatenate([u.fields[f].feature_ids for f in names])
    numeric = [f for f in names if u.fields[f].numeric is not None]
    _, plan = count_features(u, bits, n_s, fids)
    slots = np.asarray(u.feature_slot[fids])
    dense = slots >= 0
    bitset_bytes = 8.0 * u.n_words
    if plan == "histogram":
        rows = _kernels.bitset_to_ids(bits, u.n_rows).astype(np.int64)
        indptr = np.asarray(u.csr_indptr)
        count_bytes = bitset_bytes + 4.0 * float((indptr[rows + 1] - indptr[rows]).sum()) + 16.0 * n_s
        rows_method_bytes = count_bytes
    else:
        count_bytes = bitset_bytes + 8.0 * u.n_words * int(dense.sum()) + 4.0 * float(
            np.asarray(u.feature_count[fids[~dense]]).sum())
        rows_method_bytes = bitset_bytes + 8.0 * u.n_words * int(dense.sum()) + sparse_bytes(
            u, bits, n_s, feature_layout(u, fids))
    numeric_bytes = (4.0 * n_s + 8.0 * n_s * len(numeric)) if numeric else 0.0
    counted = count_bytes + numeric_bytes
    bandwidth = probed_bandwidth()
    floor_ms = counted / bandwidth * 1e3
    chosen_floor_ms = (rows_method_bytes + numeric_bytes) / bandwidth * 1e3

    whole = median_ms(lambda: service.profile(query), args.repeat)
    counts = median_ms(lambda: count_features(u, bits, n_s, fids), args.repeat)

    def summaries():  # as Profile computes them
        for f in numeric:
            segment_numeric_stats(bits, n_s, np.asarray(u.fields[f].numeric, dtype=np.float64),
                                  histogram_domain(u, f), field_codes(u, f))

    numeric_ms = median_ms(summaries, args.repeat)
    ratio = whole / floor_ms
    out = {
        "customers": u.n_rows, "segment": str(cond), "members": n_s, "fields": len(names), "values": len(fids),
        "numeric_fields": numeric, "plan": plan, "counted_bytes": counted, "count_bytes": count_bytes,
        "numeric_bytes": numeric_bytes, "probed_bandwidth_gbs": bandwidth / 1e9, "floor_ms": floor_ms,
        "profile_ms": whole, "counts_ms": counts, "numeric_ms": numeric_ms, "ratio": ratio, "target": TARGET,
        "chosen_methods_bytes": rows_method_bytes + numeric_bytes, "ratio_to_chosen_methods_bytes": whole / chosen_floor_ms,
        "meets_target": ratio <= TARGET, "cpu": cpu_model(), "repeat": args.repeat,
        "listed_values": sum(len(f.over) + len(f.under) for f in result.fields),
    }
    print(f"Profile of {n_s:,} of {u.n_rows:,} customers ({cond}), {len(names)} fields ({len(fids):,} values, "
          f"{len(numeric)} numeric), plan {plan}; {cpu_model()}")
    print(f"  counted bytes {counted / 1e6:.2f} MB (counts {count_bytes / 1e6:.2f}, numeric {numeric_bytes / 1e6:.2f}) "
          f"at {bandwidth / 1e9:.1f} GB/s probed: floor {floor_ms:.2f} ms")
    print(f"  Profile (service, median of {args.repeat}) {whole:.2f} ms = {ratio:.2f}x the floor "
          f"({'met' if ratio <= TARGET else 'NOT met'}, target <= {TARGET}x); of which counts {counts:.2f} ms, "
          f"numeric summaries {numeric_ms:.2f} ms; against the bytes of the methods the counts chose (the rare "
          f"features' rows method reads the listed rows of the sparse CSR instead of their ids), "
          f"{(rows_method_bytes + numeric_bytes) / 1e6:.2f} MB: {whole / chosen_floor_ms:.2f}x")
    print(f"results: {write_result('profile_segment', out)}")


if __name__ == "__main__":
    main()
