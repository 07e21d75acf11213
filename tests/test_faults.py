"""Faults a nightly meets, injected for real (benchmarks/faults.py measures the same functions for
docs/faults.md): a score process killed while it writes, a features process killed halfway, two
nightlies at once. No row may be lost or duplicated."""
from benchmarks import faults


def test_a_score_process_killed_while_writing_leaves_the_previous_list(spark, shop_copy):
    result = faults.killed_score_write(spark, shop_copy)
    assert result["killed"], "the score process finished before the kill; the fault was not injected"
    assert result["version_after_kill"] == result["version_before"]
    assert result["list_unchanged"] and result["rows_lost"] == 0
    assert result["next_run_rows"] == result["rows_before"]  # the half-written files are never read


def test_score_never_reads_a_features_run_that_died_halfway(spark, shop_copy):
    result = faults.killed_features_run(spark, shop_copy)
    assert result["killed"], "the features process finished before the kill; the fault was not injected"
    assert result["latest_versions_after_kill"]["gold/sequences"] > result["complete_set"]["gold/sequences"]
    assert result["pinned_after_kill"] == result["complete_set"]
    assert result["score_read_complete_set"]


def test_two_nightlies_at_once_lose_and_duplicate_nothing(spark, shop_copy):
    result = faults.concurrent_nightlies(spark, shop_copy)
    assert result["events_added"] == result["new_events"] and result["rows_lost"] == 0
    assert (result["duplicate_events"], result["duplicate_index_numbers"], result["ids_numbered_twice"],
            result["users_with_two_lists"]) == (0, 0, 0, 0)
