"""editspec: knowledge edits for language models, as code."""
__version__ = "0.1.0"
