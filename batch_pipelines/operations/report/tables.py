"""The report operation's detail table: one row per written report in ``reports``."""

REPORTS = "reports"
DETAIL_TABLES = (REPORTS,)
