"""Evaluation: benchmark tasks, metrics, sandboxed code execution, LLM-as-judge and long-context probes."""
