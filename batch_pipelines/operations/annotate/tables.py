"""The annotate operation's detail table: one row per annotated item in ``annotations``."""

ANNOTATIONS = "annotations"
DETAIL_TABLES = (ANNOTATIONS,)
