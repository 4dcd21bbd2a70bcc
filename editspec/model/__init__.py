"""Model plumbing every backend shares: loading models (loading), where modules live (layout),
hooks, token positions, second-moment statistics and their corpora, embeddings and weight deltas."""
