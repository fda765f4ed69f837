"""Task-agnostic data plumbing: JSONL files with errors that name the line, and batching."""
