print("tensor-bench: see docs/benchmarks.md")
