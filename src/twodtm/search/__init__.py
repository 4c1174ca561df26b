"""The global search: search space, engine, statistics, executors and checkpoints."""
