"""The training engine, below the sweep: the shared loop (`train`), the process it runs in
(`runtime`: device, seeds, heap), the optimizers (`optim`), the evaluation protocols
(`evaluation`) and their metrics (`metrics`, `sampled`), and the single-run `train`
command (`single_run`). No Ray, no Optuna."""
