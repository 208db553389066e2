"""Annotator backends: :mod:`.base` (the interface), :mod:`.local` (the default, no network)
and :mod:`.openai` (an OpenAI-compatible endpoint over HTTP). The ``annotator`` resource
(:mod:`batch_pipelines.operations.annotate.resource`) picks one when a run starts."""
