"""The transform operation's detail table: one row per transformed item in ``transforms``."""

TRANSFORMS = "transforms"
DETAIL_TABLES = (TRANSFORMS,)
