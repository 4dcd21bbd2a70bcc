"""From IR to artifact: the backend contract (backend), the registry, the compiler, the artifact
directory, attaching an artifact to a model in memory (attach) and merging it into a checkpoint (apply)."""
