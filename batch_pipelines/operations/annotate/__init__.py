"""The annotate operation: texts in, language, keywords, category and summary out."""

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.operations.annotate.handler import (
    RESOURCE_KEY,
    concurrency_for_resources,
    handle_annotate,
)
from batch_pipelines.operations.annotate.models import AnnotateItem, AnnotateOptions
from batch_pipelines.operations.annotate.tables import DETAIL_TABLES
from batch_pipelines.operations.annotate.undo import undo_annotate

SPEC = OperationSpec(
    name="annotate",
    description=(
        "Annotate texts (inline, text/Markdown/HTML/PDF files, or table rows), one partition per "
        "text: language, keywords, category from a configurable taxonomy, an extractive "
        "summary and a confidence (the quality score). Backend: the annotator resource "
        "(local by default, or an OpenAI-compatible endpoint). Details: annotations."
    ),
    options_model=AnnotateOptions,
    item_model=AnnotateItem,
    handler=handle_annotate,
    detail_tables=DETAIL_TABLES,
    resources=(RESOURCE_KEY,),
    group_commits=True,  # its rows only go to `annotations`
    # The openai backend mostly waits on HTTP: 16 items in flight per chunk run by default
    # (the shared client and the local backend are thread-safe); the local backend computes
    # in Python, so one at a time (more threads would only take turns on the GIL).
    item_concurrency=16,
    concurrency_for_resources=concurrency_for_resources,
    undo=undo_annotate,
    scores_quality=True,
)

__all__ = ["SPEC"]
