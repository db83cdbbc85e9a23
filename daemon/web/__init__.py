"""The status page: the queue, the workers and every transcript in a browser (no torch, read-only
unless web_actions is set)."""
