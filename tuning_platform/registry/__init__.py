"""The model a job registers: `model.py` rebuilds, scores, logs and registers it,
`packaging.py` says what code and requirements travel with it, `champion.py` settles the
`champion` alias among comparable versions."""
