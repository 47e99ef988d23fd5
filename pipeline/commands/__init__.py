"""Commands built on the pipeline's runtime that are not DVC stages:

    batch_predict.py   `python -m pipeline.commands.batch_predict IN OUT`: the maps of a large
                       folder on Ray Data, resumable (what `btbnet predict` writes, on a cluster)
"""
