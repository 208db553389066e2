"""Annotator backends: :mod:`.base` (the interface), :mod:`.local` (the default, no network)
and :mod:`.openai` (an OpenAI-compatible endpoint over HTTP). The ``annotator`` resource
(:class:`batch_pipelines.defs.resources.AnnotatorResource`) picks one when a run starts."""
