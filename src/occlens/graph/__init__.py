"""torch.fx tracing and the per-op rules (how far a change spreads, which layers fold) that the
incremental engine and the default model's batch-norm folding share."""
