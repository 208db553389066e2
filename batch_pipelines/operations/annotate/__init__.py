"""The annotate operation: texts in, language, keywords, category and summary out."""

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.operations.annotate.handler import RESOURCE_KEY, handle_annotate
from batch_pipelines.operations.annotate.models import AnnotateItem, AnnotateOptions
from batch_pipelines.operations.annotate.tables import DETAIL_TABLES
from batch_pipelines.operations.annotate.undo import undo_annotate

SPEC = OperationSpec(
    name="annotate",
    description=(
        "Annotate texts (inline, text/Markdown/HTML files, or table rows), one partition per "
        "text: language, keywords, category from a configurable taxonomy, an extractive "
        "summary and a confidence (the quality score). Backend: the annotator resource "
        "(local by default, or an OpenAI-compatible endpoint). Details: annotations."
    ),
    options_model=AnnotateOptions,
    item_model=AnnotateItem,
    handler=handle_annotate,
    detail_tables=DETAIL_TABLES,
    resources=(RESOURCE_KEY,),
    group_commits=True,  # the commit only writes `annotations`
    undo=undo_annotate,
)

__all__ = ["SPEC"]
