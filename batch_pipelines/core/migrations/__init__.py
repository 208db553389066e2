"""Warehouse migrations: one module per migration, named ``m<NNNN>_<what>.py``, each with
``ID`` (its module name without the ``m``) and ``STATEMENTS`` (a list of SQL statements).
They run in name order; add a new module to change the schema, never edit a shipped one."""
