"""Evaluation: scoring a model on build_sft's held-out rows, metrics, baselines and the report.

The package, by job:

- :mod:`.answers`: how a generated answer is normalised and parsed (choice, number, labels);
- :mod:`.metrics` and :mod:`.bootstrap`: every metric by task type, each with a seeded,
  vectorised bootstrap interval;
- :mod:`.baselines` and :mod:`.references`: majority and k-mer baselines computed in the same
  run, and the published scores shipped as data;
- :mod:`.lm_eval_export`: the test rows as lm-evaluation-harness tasks, for a cross-check.
"""
