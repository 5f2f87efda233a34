"""The training engine, below the sweep: the shared loop (`train`), the optimizers
(`optim`), the evaluation protocols (`evaluation`) and their metrics (`metrics`), and the
single-run `train` command (`single_run`). No Ray, no Optuna."""
