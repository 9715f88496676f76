"""Freed heap memory goes back to the OS between CPU updates (fairseq_lite/training/host_memory.py)."""

import ctypes

import pytest
import torch

import train_toy
from fairseq_lite.tasks import setup_task
from fairseq_lite.training import host_memory
from fairseq_lite.training.trainer import Trainer

glibc = pytest.mark.skipif(host_memory._GLIBC is None, reason="needs glibc's malloc_trim")


@glibc
def test_fragmented_free_heap_is_returned_to_the_os_once_resident_memory_grows():
    # 96 MiB of 64 KiB blocks (below glibc's smallest mmap threshold: always from the arena), every other one
    # freed: the freed ones can neither merge nor be trimmed from the heap's top, as batches of varying shape
    # leave the heap
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 64 * 1024, 1536
    trimmer, lazy = host_memory.HeapTrimmer(growth=block * count // 8), host_memory.HeapTrimmer(growth=2**62)
    # free memory left resident by earlier tests in this process would be reused by the blocks without growing the
    # resident set: return it first, so the blocks fault in new pages
    host_memory.release_free_heap()
    assert not trimmer.after_update() and not lazy.after_update()  # the first update sets the reference
    blocks = [libc.malloc(block) for _ in range(count)]
    for pointer in blocks:
        ctypes.memset(pointer, 1, block)  # touch every page: resident
    for pointer in blocks[::2]:
        libc.free(pointer)
    freed = block * count // 2
    try:
        assert not lazy.after_update() and not lazy.after_update()  # grown less than its bound: nothing trimmed
        before = host_memory.resident_bytes()
        assert trimmer.after_update() and trimmer.trims == 1
        assert before - host_memory.resident_bytes() >= 0.8 * freed
        assert not trimmer.after_update()  # the next update only sets the new reference
    finally:
        for pointer in blocks[1::2]:
            libc.free(pointer)


def test_every_cpu_update_goes_through_the_heap_trimmer(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory.HeapTrimmer, "after_update", lambda self: calls.append(self) or False)
    cfg = train_toy.toy_config(tmp_path)
    task = setup_task(cfg.task)
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    for _ in range(3):
        assert trainer.train_step([next(itr)]) is not None
    assert trainer.device == torch.device("cpu") and len(calls) == 3
