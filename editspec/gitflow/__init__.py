"""Specs in git: reading them at a revision (revisions), their semantic diff (diff) and `editspec.lock` (lock)."""
