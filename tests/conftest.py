"""Shared pytest set-up: small thread counts so that parallel test workers do not oversubscribe 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
