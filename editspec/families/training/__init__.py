"""The training family (ft, sense): a spec as objectives, a training loop with KL to the unedited model."""
