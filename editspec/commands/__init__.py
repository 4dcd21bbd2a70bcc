"""CLI command modules.  Each defines `COMMANDS`, the click commands it adds to `editspec`.

Modules here import torch and transformers only inside their command functions, so that
`editspec --help` and the front-end commands stay fast.
"""
