"""Launch plumbing shared by the task families: config, builders, the runner, results.json,
sweeps and distributed ranks."""
