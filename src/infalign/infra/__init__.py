"""Support code every layer may use: the content-keyed atomic cache, ``torch.distributed`` helpers
that are no-ops in one process, PNG plotting, and the thread count (``threads: auto``)."""
