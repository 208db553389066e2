"""Migration 0010_batch_stopped: ``batches.stopped``, set when a batch is stopped (cancelled,
stopped on its first error, over its error budget): its status no longer follows its items.

Until now this was read from the error message: a failed batch was stopped unless its error
began with "all " ("all N items failed or were cancelled"). Existing rows get the flag that
rule gave them."""

ID = "0010_batch_stopped"

STATEMENTS = [
    "alter table batches add column stopped boolean default false",
    """
    update batches set stopped = (
        status = 'cancelled' or (status = 'failed' and coalesce(error, '') not like 'all %')
    )
    """,
]
