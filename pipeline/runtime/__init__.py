"""What every stage shares, none of it a stage itself:

    params.py     params.yaml as a read-only view recording the keys a stage reads; paths and URIs
    stage.py      `main` / `execute`: configure → checks → old outputs removed → run; one-line
                  errors and exit codes; outputs staged and renamed into place
    process.py    the stage process's bond with `dvc repro` (dies with it) and its signals
    cluster.py    Ray: connect to $RAY_ADDRESS or start a local instance; its console filter
    tracking.py   MLflow: a parent run per DVC invocation, a run per stage, tags, headline metrics
    testsets.py   `evaluate.test_sets`, the test sets both scoring stages read
    figures.py    the PNG figures: image grids, captioned examples, PR curves, loss lines

This file imports nothing: `pipeline/__init__.py` arms `process.die_with_parent` from the
first line of a stage's process, before any heavy import.
"""
