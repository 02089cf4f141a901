"""Tests for callstream.gcpolicy (the collector's settings of a serving process)."""

from __future__ import annotations

import gc

from callstream.server.gcpolicy import OLDER_THRESHOLD, YOUNG_THRESHOLD, tune_garbage_collector


def test_start_up_objects_are_frozen_and_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
        assert gc.get_freeze_count() > 0
        assert before[0] < YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
