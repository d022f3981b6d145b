"""Benchmarks behind `biomm bench ...`: each prints one JSON object, ratios against a peer in the same run."""
