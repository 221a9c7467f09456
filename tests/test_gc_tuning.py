"""The worker's GC tuning: the young generation's threshold raised, the older generations' kept."""

from __future__ import annotations

import gc

from gateway.http.runner import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_raises_only_the_young_threshold():
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        gc.set_threshold(GC_YOUNG_THRESHOLD * 2, 5, 20)  # a higher one set by the operator stays
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD * 2, 5, 20)
    finally:
        gc.set_threshold(*saved)
