"""Which device a process computes on: the GPU that Spark assigned to its task, the CPU when there
is none. Pure torch (pyspark and Horovod are asked lazily, only where they run the process).

Spark assigns GPUs per task (`spark.task.resource.gpu.amount`) but does not narrow
CUDA_VISIBLE_DEVICES, so a scoring task or a Horovod rank must pick its assigned address itself;
TorchDistributor narrows CUDA_VISIBLE_DEVICES to the task's GPUs and starts the rank with
LOCAL_RANK, so there the rank's device is cuda:LOCAL_RANK.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch


def cuda_index(assigned: Sequence[str], local_rank: int, visible: str | None) -> int:
    """Index among the visible CUDA devices of the GPU to use: the first assigned address (translated
    when CUDA_VISIBLE_DEVICES lists the visible ones), else the local rank."""
    if not assigned:
        return local_rank
    address = str(assigned[0]).strip()
    if visible:
        listed = [v.strip() for v in visible.split(",") if v.strip()]
        # TorchDistributor already narrowed the visible devices to the task's own GPUs.
        return listed.index(address) if address in listed else 0
    return int(address)


def pick(requested: str = "auto", assigned: Sequence[str] = (), local_rank: int = 0, key: str = "device") -> str:
    """'cpu' or 'cuda:N' for requested auto|cpu|cuda; `key` names the setting in errors."""
    if requested == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError(f"{key} is 'cuda' but this process sees no CUDA device (assigned GPUs: "
                               f"{list(assigned) or 'none'}); use 'auto' or 'cpu', or give the executors GPUs "
                               f"(conf/cluster-gpu.yaml)")
        return "cpu"
    index = cuda_index(assigned, local_rank, os.environ.get("CUDA_VISIBLE_DEVICES"))
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(f"GPU {index} was assigned to this process (assigned addresses {list(assigned)}, local "
                           f"rank {local_rank}) but only {count} are visible: check the executors' GPU discovery "
                           f"script and spark.task.resource.gpu.amount (conf/cluster-gpu.yaml)")
    return f"cuda:{index}"


def spark_task_gpus() -> list[str]:
    """The GPU addresses Spark assigned to the running task ([] outside a task or without GPUs)."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return []
    ctx = TaskContext.get()
    gpu = ctx.resources().get("gpu") if ctx is not None else None
    return list(gpu.addresses) if gpu is not None else []


def autocast(device: str):
    """bf16 autocast on a GPU (tensor cores; no loss scaling needed), a no-op context on the CPU."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
