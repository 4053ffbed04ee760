"""HTTP routers, one per resource: inference (classify/compress), models, health."""
