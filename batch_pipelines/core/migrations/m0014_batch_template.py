"""Migration 0014_batch_template: ``batches.template``, the name of the template a batch was
submitted from (``submit --template``, or its schedule), so the batches of one template can be
found and compared."""

ID = "0014_batch_template"

STATEMENTS = [
    "alter table batches add column template varchar",
]
