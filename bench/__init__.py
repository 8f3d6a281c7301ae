"""varrt.bench: speed and quality benchmarks."""
