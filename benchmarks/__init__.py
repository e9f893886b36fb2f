"""Benchmarks of the detector, the demo and the metrics (run as `python -m benchmarks.<script>`)."""
