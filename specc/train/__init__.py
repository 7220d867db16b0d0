"""Training: losses (`specc.train.losses`), optimizers (`specc.train.optimizers`) and metrics.

Nothing is imported here, so `import specc.train` stays cheap; import the submodule you need.
"""
