"""The task-agnostic prompt core: templates and where the prompt is placed, prompt encoders,
frozen backbones and how they execute, dev selection, and prompt methods as objects."""
