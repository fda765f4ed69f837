"""LAMA knowledge probing: facts, P@1, the prompt module, the one pass, runs and the report."""
