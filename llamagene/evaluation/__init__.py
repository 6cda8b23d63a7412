"""Evaluation: scoring a model on build_sft's held-out rows, metrics, baselines and the report.

The package, by job:

- :mod:`.answers`: how a generated answer is normalised and parsed (choice, number, labels);
- :mod:`.metrics` and :mod:`.bootstrap`: every metric by task type, each with a seeded,
  vectorised bootstrap interval;
- :mod:`.baselines` and :mod:`.references`: majority and k-mer baselines computed in the same
  run, and the published scores shipped as data;
- :mod:`.rows`, :mod:`.models`, :mod:`.scoring`, :mod:`.predict`: the rows and their gold
  answers, the models scored, choice log-likelihoods and greedy answers, one model's predictions;
- :mod:`.results` and :mod:`.report`: metrics.json's entries, report.md and the charts;
- :mod:`.lm_eval_export`: the test rows as lm-evaluation-harness tasks, for a cross-check.
"""
