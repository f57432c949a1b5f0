"""Where a second kernel thread starts to pay: one thread against two per kernel and size, and what the
thread policy (segsrv._kernels.resolve_threads) picks (issue 16, item 3).

A parallel region wakes its sleeping team members (OMP_WAIT_POLICY=PASSIVE, docs/kernels.md): 15-60 us
on a 2-core VM, which a small call cannot win back. Each kernel wrapper turns its arguments into an
estimate of the work in streamed-word equivalents (random probes, gathers and elements weighed by what
they cost against a streamed word) and the policy runs one thread below SMALL_WORK_WORDS of it. This
bench times, on random data, each kernel family with one and with two threads at sizes around the
crossover (medians of --repeats interleaved calls) and prints, per size, the 2-thread / 1-thread ratio,
the policy's pick and the pick's cost against the faster of the two ("pick / best": 1.00 when the policy
chose the faster). Run it on a new machine to check the weights; it needs 2+ usable CPUs.

    python bench/thread_crossover.py [--repeats 21]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common import cpu_model, threads_picked, write_result


def _time_us(fn, n_threads: int, samples: list[float]) -> None:
    t = time.perf_counter()
    fn(n_threads)
    samples.append((time.perf_counter() - t) * 1e6)


def cases(rng):
    """(kernel, size label, size, call(n_threads), policy's thread count) per kernel and size."""
    from segsrv import _kernels as K

    n_words = 15_625  # 1M bits
    matrix = rng.integers(0, 2 ** 63, size=(600, n_words), dtype=np.int64).view(np.uint64)
    query = rng.integers(0, 2 ** 63, size=n_words, dtype=np.int64).view(np.uint64)
    for n_rows in (8, 32, 64, 90, 200, 600):
        rows = rng.choice(600, size=n_rows, replace=False).astype(np.int64)
        yield ("and_count_dense", "rows of 1M bits", n_rows,
               lambda nt, rows=rows: K.and_count_dense(query, matrix, rows, n_threads=nt),
               threads_picked(lambda: K.and_count_dense(query, matrix, rows)))
    for n_ids in (30_000, 100_000, 300_000, 1_000_000, 3_000_000):
        ids = np.sort(rng.integers(0, n_words * 64, size=n_ids).astype(np.uint32))
        offsets = np.linspace(0, n_ids, 101).astype(np.int64)
        yield ("and_count_sparse", "ids over 100 features", n_ids,
               lambda nt, ids=ids, offsets=offsets: K.and_count_sparse(query, ids, offsets, n_threads=nt),
               threads_picked(lambda: K.and_count_sparse(query, ids, offsets)))
    n_csr, n_feat = 1_000_000, 5_000
    lengths = rng.integers(10, 30, size=n_csr)
    indptr = np.zeros(n_csr + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(lengths)
    indices = rng.integers(0, n_feat, size=int(indptr[-1])).astype(np.uint32)
    weights = rng.normal(size=n_feat)
    for k in (3_000, 10_000, 30_000, 100_000):
        rows = np.sort(rng.choice(n_csr, size=k, replace=False)).astype(np.uint32)
        yield ("csr_row_scores", "rows of ~20 features", k,
               lambda nt, rows=rows: K.csr_row_scores(indptr, indices, weights, rows=rows, n_threads=nt),
               threads_picked(lambda: K.csr_row_scores(indptr, indices, weights, rows=rows)))
        yield ("csr_histogram", "rows of ~20 features", k,
               lambda nt, rows=rows: K.csr_histogram(indptr, indices, rows, n_feat, n_threads=nt),
               threads_picked(lambda: K.csr_histogram(indptr, indices, rows, n_feat)))
    for m in (64, 256, 1024, 4096):
        successes = rng.integers(1_000, 200_000, size=m).astype(np.int64)
        draws = rng.integers(1_000, 200_000, size=m).astype(np.int64)
        population = np.full(m, 1_000_000, dtype=np.int64)
        k = (successes * draws // 1_000_000 + rng.integers(0, 50, size=m)).astype(np.int64)
        yield ("hypergeom_tail", "tables", m,
               lambda nt, k=k, s=successes, d=draws, p=population: K.hypergeom_tail(k, s, d, p, n_threads=nt),
               threads_picked(lambda: K.hypergeom_tail(k, successes, draws, population)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    from segsrv import _kernels as K
    from segsrv.cpus import usable_cpus

    if usable_cpus() < 2:
        raise SystemExit("thread_crossover: needs at least 2 usable CPUs")
    rng = np.random.default_rng(0)
    print(f"{cpu_model()}; SMALL_WORK_WORDS = {K.SMALL_WORK_WORDS:,}; medians of {args.repeats} interleaved calls")
    print(f"{'kernel':18s} {'size':>10s} {'':22s} {'1 thread us':>12s} {'2 threads us':>13s} {'2t/1t':>6s} "
          f"{'picks':>5s} {'pick/best':>9s}")
    rows = []
    for kernel, label, size, call, picked in cases(rng):
        call(1), call(2)  # warm: pages touched, team created
        samples = {1: [], 2: []}
        for _ in range(args.repeats):
            for nt in (1, 2):
                _time_us(call, nt, samples[nt])
        one, two = statistics.median(samples[1]), statistics.median(samples[2])
        pick = one if picked == 1 else two
        row = {"kernel": kernel, "size": size, "unit": label, "one_thread_us": round(one, 1),
               "two_threads_us": round(two, 1), "ratio": round(two / one, 3), "policy_threads": picked,
               "pick_over_best": round(pick / min(one, two), 3)}
        rows.append(row)
        print(f"{kernel:18s} {size:>10,d} {label:22s} {one:12.1f} {two:13.1f} {two / one:6.2f} {picked:5d} "
              f"{row['pick_over_best']:9.2f}")
    worst = max(rows, key=lambda r: r["pick_over_best"])
    print(f"worst pick: {worst['kernel']} at {worst['size']:,} ({worst['pick_over_best']:.2f}x the faster)")
    path = write_result("thread_crossover", {"cpu": cpu_model(), "small_work_words": K.SMALL_WORK_WORDS,
                                             "repeats": args.repeats, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
