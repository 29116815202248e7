"""Every reach into Ray's, MLflow's and Optuna's private parts, one module per library.

Each function names the upstream file, line and version it relies on, and a test fails when the
internal changes (named beside it). An upgrade of Ray, MLflow or Optuna means reading this
folder, not the whole package. `moved.py` keeps the import paths of older releases of this
package loading, for the state Tune pickled by them.
"""
