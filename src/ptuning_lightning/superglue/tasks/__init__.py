"""One small file per SuperGLUE task on ``superglue.data.SuperGlueDataModule``: how to read
a record, its templates and its verbalizer."""
