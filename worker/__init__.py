"""redchat worker: background jobs that keep Redis bounded (trimming expired history)."""
