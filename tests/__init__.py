"""The test suite as a package: pytest then puts the repo root on sys.path, so `pipeline` (not
an installed package) and `tests.pipeline_helpers` import under a plain `pytest` too."""
