"""GPU workers apart, on CPU: a real `dask scheduler` and two `dask worker` processes on
127.0.0.1, one started with `--resources GPU=1`. With gpu_resource on, every backbone task
asks for GPU=1: the worker without it never runs one and never builds the model, while
the audio work goes anywhere. (What the SLURM path does with a `gpu:` partition.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featurize import datasets
from featurize.demo import write_demo_corpus
from featurize.pipeline import _split_gpu, run_features
from test_dask_cluster import _wait_for_workers, stop_processes

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def test_backbone_tasks_only_on_the_gpu_worker(tmp_path):
    import torch
    from distributed import Client, get_task_stream

    from featurize.backbone import tiny_cnn

    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_cnn().state_dict(), str(weights))
    write_demo_corpus(tmp_path / "demo", n=4, seconds=1.0, size=(128, 72), seed=3)
    rows = datasets.build("demo", tmp_path / "demo")
    over = {"backbone": {"weights": str(weights), "arch": "tiny_cnn", "on": "frames", "size": 32,
                         "device": "cpu"}}

    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = open(tmp_path / "dask.log", "w")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=env, stdout=logs, stderr=subprocess.STDOUT)]
    try:
        for name, extra in (("cpu", []), ("gpu", ["--resources", "GPU=1"])):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--name", name, *extra,
                 "--local-directory", str(tmp_path / name)], env=env, stdout=logs, stderr=subprocess.STDOUT))
        address = _wait_for_workers(sched_file, 2, procs)
        with Client(address) as client:
            names = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
            with get_task_stream(client) as ts:
                s = run_features(rows, tmp_path / "store", ["backbone", "logmel"], overrides=over,
                                 scheduler=client, gpu_resource=True, progress=False)
            assert (s.done, s.failed_total) == (len(rows) * 2, 0), str(s)
            ran = [(t["key"], t["worker"]) for t in ts.data]
            gpu_tasks = [w for k, w in ran if "featurize-gpu-" in str(k)]
            assert len(gpu_tasks) == len(rows)                       # one backbone task per video
            assert set(gpu_tasks) == {names["gpu"]}                  # ... all on the GPU worker
            assert len(ran) == 2 * len(rows)                         # + one audio task per video
            def cached_extractors():   # nested: shipped by value to the workers
                from featurize import registry

                return sorted({name for name, _cfg in registry._CACHE})

            built = client.run(cached_extractors)
            assert "backbone" not in built[names["cpu"]]             # the model never built there
            assert "backbone" in built[names["gpu"]]
    finally:
        stop_processes(procs)
        logs.close()


def test_split_gpu_keeps_cpu_work_apart(tmp_path):
    """Crop-based backbone runs faces again on the GPU task without writing it; the CPU task
    writes faces and the rest."""
    import torch

    from featurize.backbone import tiny_cnn
    from featurize.pipeline import plan_extractors

    torch.save(tiny_cnn().state_dict(), str(tmp_path / "w.pt"))
    specs = plan_extractors(["faces", "backbone", "logmel"],
                            {"backbone": {"weights": str(tmp_path / "w.pt"), "arch": "tiny_cnn"}})
    tasks = _split_gpu([({"video_id": "v"}, specs, [s.name for s in specs])])
    (r1, need1, write1, res1), (r2, need2, write2, res2) = tasks
    assert res1 is None and sorted(write1) == ["faces", "logmel"]
    assert res2 == {"GPU": 1} and write2 == ["backbone"] and [s.name for s in need2] == ["faces", "backbone"]
