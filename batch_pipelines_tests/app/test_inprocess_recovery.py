"""The in-process runner (``submit --wait``) never leaves an item ``running`` behind it: a chunk
run that cannot commit (a full disk) puts its items back to pending and says why, and
``resume`` continues the batch once the cause is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipelines.app import control
from batch_pipelines.app.inprocess import ChunkRunError, run_batch_in_process
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import runner
from batch_pipelines.definitions import defs

MANIFEST = {
    "operation": "import",
    "options": {"target_table": "t"},
    "settings": {"chunk_size": 2, "max_retries": 0},
    "items_from": {"glob": "data/samples/penguins_*"},
}


def test_a_commit_that_fails_leaves_no_item_running(
    samples: Path,
    env,
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id = submit_batch(MANIFEST, instance=instance)

    def disk_full(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(runner, "flush", disk_full)
        with pytest.raises(ChunkRunError, match="No space left on device"):
            run_batch_in_process(batch_id, instance, defs)
    assert env.sql(
        "select status, count(*) from batch_items where batch_id = ? group by 1", [batch_id]
    ) == [("pending", 6)]

    result = control.resume_batch(batch_id, instance=instance)
    assert "6 item(s) left" in result.message
    assert run_batch_in_process(batch_id, instance, defs)["status"] == "completed"
    assert env.sql("select count(*) from t") == [(592,)]
