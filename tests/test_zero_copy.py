"""The prepared data reaches every trial of a node from Ray's object store without a copy."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.config import DataConfig
from orchestrator.data import load_dataset
from orchestrator.engine.evaluation import to_device


def test_trials_read_the_object_store_copy_of_the_data(tmp_path: Path, local_ray: None) -> None:
    from ray import tune

    def trial(config: dict, data) -> None:  # nested: pickled by value for the workers
        arrays = [
            getattr(s, f)
            for s in (data.train, data.val, data.test)
            for f in ("user", "item", "rating", "timestamp")
        ]
        tensors = to_device(data, "cpu")
        views = [
            getattr(s, f)
            for s in (tensors.train, tensors.val, tensors.test)
            for f in ("user", "item", "rating", "timestamp")
        ]
        tune.report(
            {
                "pid": os.getpid(),
                # Ray maps numpy arrays out of its shared-memory store read-only, in place
                "read_only": all(not a.flags.writeable for a in arrays),
                # and the trial's CPU tensors are those very bytes
                "shared": all(
                    v.data_ptr() == a.ctypes.data for v, a in zip(views, arrays, strict=True)
                ),
            }
        )

    data = load_dataset(
        DataConfig(dataset="synthetic:users=300,items=400,interactions=20000", eval_negatives=0)
    )
    grid = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, data=data), {"cpu": 1}),
        param_space={"n": tune.grid_search([0, 1])},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()
    rows = grid.get_dataframe()
    assert len(rows) == 2 and rows["pid"].nunique() == 2  # two processes on one node
    assert rows["read_only"].all() and rows["shared"].all()
