"""The Ray Train job shared by pretrain and finetune (section 4.1's recipe, DDP on Ray).

One module per responsibility, read in this order:

    config.py     params.yaml's `train:` recipe (+ a stage's overrides) → TrainConfig; StageSpec
    driver.py     `train_stage`: check the inputs, fit on Ray, write the outs, log to MLflow
    store.py      inputs from URIs (copied once per node) and Ray Train's run store; the run key
    trainer.py    the TorchTrainer: wait for the cluster, fit, unwrap a worker's bad input
    worker.py     what each Train worker runs: seeded resumable loader, the loop, checkpoints
    attempts.py   the Ray actor counting restarts, steps and nodes across attempts
    reporting.py  MLflow: loss plots, the logged (and registered) model with its exports

This file imports nothing: a Train worker loads `worker.py` and what it needs (torch, the
library), not MLflow or matplotlib, which only the driver uses.
"""
