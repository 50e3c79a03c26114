"""The engines that score occluded windows: dense, incremental, the drill-down, the cost model that
chooses between them, and memory (batch sizes, the out-of-memory back-off)."""
