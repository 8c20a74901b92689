"""Hardening harnesses: the good-code sweep and damaged-input fuzzing, shared by the tests
and by the scripts in benchmarks/ that run them at full size."""
