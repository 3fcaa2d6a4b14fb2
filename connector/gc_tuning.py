"""Garbage-collector settings for a long-running pipeline process.

The hot path allocates a few container objects per record (the record, its document, a
UUID, a staging row) that live only while their batch is in flight and are freed by
reference counting: they form no cycles. CPython's default thresholds (700, 10, 10) still
run the cyclic collector thousands of times per million records, and each run of the
oldest generation walks every object the imports created. ``bench/stages.py`` measures
the cost: with the defaults, the collector takes about 40% of the per-record CPU time
of decode, map, batch, row building and ack. Collecting the youngest generation every
``GEN0_THRESHOLD`` allocations instead, with what start-up created frozen out of the
collector's sight, removes most of it; cyclic garbage is still collected.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Freeze what exists now (modules, config, compiled decoders) and collect less often.

    Call once, after start-up and before the pipeline runs.
    """
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
