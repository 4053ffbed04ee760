"""Peer servers the benchmarks compare ours with; each runs under its own interpreter."""
