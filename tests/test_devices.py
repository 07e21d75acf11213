"""Which device a rank or a scoring task computes on."""
import pytest
import torch

from recsys_spark import devices


def test_the_assigned_gpu_is_used_not_always_device_0():
    # Spark assigned GPU 3 and left every GPU visible (a scoring task, a Horovod rank): cuda:3.
    assert devices.cuda_index(["3"], local_rank=0, visible=None) == 3
    # TorchDistributor narrowed the visible devices to the task's GPU: it is cuda:0 in this process.
    assert devices.cuda_index(["3"], local_rank=0, visible="3") == 0
    assert devices.cuda_index(["5"], local_rank=0, visible="4,5") == 1
    # No assignment (torchrun on a GPU host): the local rank.
    assert devices.cuda_index([], local_rank=2, visible=None) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused_naming_the_key():
    assert devices.pick("auto", ["0"]) == "cpu"
    assert devices.pick("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="score.device is 'cuda' but this process sees no CUDA device"):
        devices.pick("cuda", key="score.device")
    assert devices.spark_task_gpus() == []  # outside a Spark task
