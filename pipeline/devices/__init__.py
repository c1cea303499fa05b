"""Where models are timed: the host (a worker process per measurement), arm64 under emulation,
remote reports; the standalone on-device runner ``edgeslim_bench`` and its report schema."""
