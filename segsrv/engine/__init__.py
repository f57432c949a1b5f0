"""The engine: computation only, over an open snapshot. Numpy in, ops dataclasses out; never imports grpc.

    conditions   evaluation of condition trees (segsrv.ops.conditions) to bitsets
    count        rows matching a condition
    relate       over- and under-indexed features of a condition, with exact statistics
    stats        the statistics of relate (hypergeometric tests, intervals, BH q-values)
    predict/     predict within a segment and ScoreSegment: target.py (the target, evidence and shared
                 counts), one module per model (conjunction.py, factorized.py, logistic.py)
    evaluate     holdout quality of a prediction method
    assign       the segment catalog compiled per version: which segments a customer is in, propensities
    catalog      segment catalog files: parsing, validation against a snapshot, publishing a version
    rebuild      `segsrv build` over a snapshot with a catalog: the new data, then the catalog carried over
    export       the ids of a condition's rows, optionally ranked by a score
    profile      a segment field by field against the population
    diff         drift of the catalog between two versions
    privacy      the privacy floor (counts of fewer than k rows)
    cancel       cooperative cancellation of long work (the transport installs the check)

The query and result types live in segsrv.ops (one module per operation); the service
(segsrv.service) calls these functions.
"""

from .._kernels import set_num_threads as set_kernel_threads

__all__ = ["set_kernel_threads"]
