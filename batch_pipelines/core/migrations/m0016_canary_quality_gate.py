"""Migration 0016_canary_quality_gate: the canary and the quality gate of a batch.

``canary_chunks``: its first chunks are the canary (0 or null: no canary); ``canary_status``:
running, passed, failed or released (see :mod:`batch_pipelines.core.gates`). ``gate_round``:
0 for a submitted batch, n for the n-th child a quality gate sent back; ``gate_status``: null
until the gate looked at the finished batch, then passed, requeued, max_rounds or error."""

ID = "0016_canary_quality_gate"

STATEMENTS = [
    "alter table batches add column canary_chunks integer",
    "alter table batches add column canary_status varchar",
    "alter table batches add column gate_round integer",
    "alter table batches add column gate_status varchar",
]
