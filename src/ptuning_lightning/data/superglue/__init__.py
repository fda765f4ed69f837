"""SuperGLUE / FewGLUE: one small DataModule per task on a shared base (``base.py``)."""
