"""recsweep: overnight sweeps of recommender models on Ray Tune and Optuna, ONNX export.

One import package, `orchestrator`, with four parts, each where its import says it is:

- `orchestrator/` (this folder): the sweep's stages, in the order they run, and the
  command line (`python -m orchestrator`, `cli.py`);
- `orchestrator.engine` (`orchestrator/engine/`): the shared training loop and evaluation;
- `orchestrator.data` (`orchestrator/data`, a link to the top-level `data/`): datasets;
- `orchestrator.models` (`orchestrator/models`, a link to the top-level `models/`): one
  model per file, by name.

ARCHITECTURE.md is the map: what each module does and what it may import.
"""
