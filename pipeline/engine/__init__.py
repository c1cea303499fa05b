"""The engine: the stage contract, plan checks, cache keys, the artifact store, the run lock,
the accuracy guard, measurement and the runner. It knows nothing of any stage's internals."""
