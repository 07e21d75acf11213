"""How training ranks talk to each other, under either launcher (`train.launcher`).

`connect(launcher)` joins the process group of the rank it runs in and returns an object with the
few operations the rank loop needs: its rank and size, its device, `setup` (identical weights on
every rank, gradients averaged across ranks), `mean`, `broadcast_ints`, `gather` and `close`.
`announced(fn, *args)` is the rank function TorchDistributor starts: it says on stdout that the
rank started, then runs fn (see train.launch).

- horovod: started by `horovod.spark.run` (Gloo controller); gradients are averaged by Horovod's
  DistributedOptimizer; the device is the GPU Spark assigned to the rank's task.
- torch_distributor: started by pyspark's TorchDistributor through torchrun (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR in the environment); gradients are averaged by DistributedDataParallel
  over gloo on the CPU or NCCL on GPUs; the device is cuda:LOCAL_RANK (TorchDistributor narrows
  CUDA_VISIBLE_DEVICES to the task's GPUs).
Pure torch: never imports pyspark (Horovod's task module does, but only inside a Horovod rank).
"""
from __future__ import annotations

import os
import pickle
import sys

import torch

from recsys_spark import devices


class HorovodRanks:
    def __init__(self):
        import horovod.torch as hvd

        hvd.init()
        self._hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self.device = devices.pick("auto", _horovod_task_gpus(), self.local_rank, key="train (horovod rank)")

    def setup(self, model, optimizer):
        """(module to call in training, optimizer): rank 0's weights everywhere, gradients averaged."""
        hvd = self._hvd
        # Horovod cannot broadcast bool tensors; the bool buffer (has_id) comes from the job on every rank.
        hvd.broadcast_parameters({k: v for k, v in model.state_dict().items() if v.dtype != torch.bool}, root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return model, hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def mean(self, value: float, name: str) -> float:
        return float(self._hvd.allreduce(torch.tensor(value, dtype=torch.float64), name=name))

    def broadcast_ints(self, values: list[int], name: str) -> list[int]:
        return [int(v) for v in self._hvd.broadcast(torch.tensor(values), root_rank=0, name=name)]

    def gather(self, obj) -> list:
        return self._hvd.allgather_object(obj)

    def close(self) -> None:
        self._hvd.shutdown()


def _horovod_task_gpus() -> list[str]:
    """GPU addresses Spark assigned to this Horovod rank's task (Horovod's task service knows them)."""
    try:
        from horovod.spark.task import get_available_devices
    except ImportError:  # a rank started outside Spark (horovodrun)
        return []
    return list(get_available_devices())


# Every tensor a TorchRanks collective saw, kept for the life of the process (a few small tensors
# per epoch). When gloo's worker thread drops the last reference to a tensor Python created, it
# needs the GIL, and the group's destructor joins that thread while holding the GIL: a deadlock,
# seen in destroy_process_group and, when the tensors died with the ranks object while DDP still
# held the group, at process exit (the other rank's torchrun then waits out its 300 s exit barrier).
_HELD: list = []


class TorchRanks:
    def __init__(self):
        import torch.distributed as dist

        self._dist = dist
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = devices.pick("auto", (), self.local_rank, key="train (torch_distributor rank)")
        if self.device != "cpu":
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if self.device != "cpu" else "gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def setup(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel

        # DDP copies rank 0's parameters to every rank; buffers (item features, scaling statistics)
        # come from the job on every rank, so they are not re-broadcast each step.
        net = DistributedDataParallel(model, device_ids=[self.device] if self.device != "cpu" else None,
                                      broadcast_buffers=False)
        return net, optimizer

    def _tensor(self, values, dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype, device=self.device)
        _HELD.append(t)
        return t

    def _zeros(self, n: int) -> torch.Tensor:
        t = torch.zeros(n, dtype=torch.uint8, device=self.device)
        _HELD.append(t)
        return t

    def mean(self, value: float, name: str) -> float:
        t = self._tensor([value], torch.float64)
        self._dist.all_reduce(t)
        return float(t[0]) / self.size

    def broadcast_ints(self, values: list[int], name: str) -> list[int]:
        t = self._tensor(values, torch.long)
        self._dist.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]

    def gather(self, obj) -> list:
        """obj of every rank, by rank (pickled, as all_gather_object does, into tensors kept in _HELD)."""
        data = pickle.dumps(obj)
        size = self._tensor([len(data)], torch.long)
        sizes = [self._tensor([0], torch.long) for _ in range(self.size)]
        self._dist.all_gather(sizes, size)
        longest = max(int(s[0]) for s in sizes)
        padded = self._zeros(longest)
        padded[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        parts = [self._zeros(longest) for _ in range(self.size)]
        self._dist.all_gather(parts, padded)
        return [pickle.loads(p[:int(s[0])].cpu().numpy().tobytes()) for p, s in zip(parts, sizes)]

    def close(self) -> None:
        self._dist.barrier()
        self._dist.destroy_process_group()


# The line a rank prints as the rank function starts (TorchDistributor streams every rank's output to
# the driver): a launch that failed with no rank having printed it failed in the launcher's own
# start-up, before any work, and can be started again (train.launch).
STARTED = "recsys-spark: rank function started"


def announced(fn, *args):
    """Rank function: print STARTED, then return fn(*args).

    The ranks of one torchrun (TorchDistributor's local mode starts them all from one) write what
    they return to the same file, which the driver takes for rank 0's, and torchrun's wrapper exits 0
    even when a rank failed: so the other ranks leave without writing, and a failed rank 0 leaves no
    result behind, which TorchDistributor reports as a failure."""
    print(f"{STARTED} (rank {os.environ.get('RANK', '?')})", flush=True)
    result = fn(*args)
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1 and os.environ.get("RANK") != "0":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return result


def connect(launcher: str):
    """The ranks of the process group this process was started in by `launcher`."""
    if launcher == "horovod":
        return HorovodRanks()
    if launcher == "torch_distributor":
        return TorchRanks()
    raise ValueError(f"train.launcher: must be horovod or torch_distributor, got {launcher!r}")
