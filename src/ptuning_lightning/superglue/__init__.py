"""SuperGLUE (FewGLUE) under the few-shot protocol: tasks, candidate scoring, runs, report."""
