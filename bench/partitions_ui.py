"""How long the web UI takes to load an asset's partitions: the GraphQL queries of the asset's
Partitions tab (every partition key and each one's status) and of its overview (partition
counts), timed against a running ``dagster dev`` (used by ``bench/fanout.py --graphql``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The queries behind the asset's Partitions tab (partition keys and each one's status) and
# the partition counts of the asset's overview, as the UI sends them to /graphql.
PARTITIONS_QUERY = """
query PartitionHealth($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
      }
    }
  }
}
"""
PARTITION_STATS_QUERY = """
query PartitionStats($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { partitionStats { numMaterialized numFailed numPartitions } }
  }
}
"""


def time_graphql(server: Any, asset: str = "annotate_items") -> dict[str, float]:
    """Wall time of the Partitions tab's query (first and second load) and of the partition
    stats query, against the running web server."""
    variables = {"key": {"path": [asset]}}
    out: dict[str, float] = {}
    for label in ("partitions_s", "partitions_again_s"):
        t = time.perf_counter()
        data = server.graphql(PARTITIONS_QUERY, variables, timeout_s=600)
        out[label] = time.perf_counter() - t
    node = data["assetNodeOrError"]
    out["partition_keys"] = float(len(node["partitionKeysByDimension"][0]["partitionKeys"]))
    out["materialized"] = float(len(node["assetPartitionStatuses"]["materializedPartitions"]))
    t = time.perf_counter()
    server.graphql(PARTITION_STATS_QUERY, variables, timeout_s=600)
    out["stats_s"] = time.perf_counter() - t
    return out


def time_report_cli(batch_id: str) -> float:
    """Wall time of ``batch-pipelines report BATCH_ID`` (a new process, as a user runs it)."""
    cli = str(Path(sys.executable).with_name("batch-pipelines"))
    t = time.perf_counter()
    subprocess.run([cli, "report", batch_id], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t
