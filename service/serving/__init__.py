"""The inference service: HTTP edge (app, routes) -> data plane (inference) -> model
repository (store, workers, batcher) -> backends. Nothing here imports torch at module level."""
