"""Experiments on the real system (paper §6): the continual-learning evaluation and its report.

- :mod:`twinloop.showcase.experiments.facts` — made-up facts the base cannot know, with paraphrased probes
  (the data in ``data/facts.yaml``, checked when loaded);
- :mod:`twinloop.showcase.experiments.metrics` — the accuracy matrix and GEM metrics (ACC, BWT, forgetting);
- :mod:`twinloop.showcase.experiments.continual` — the experiment: methods as strategy objects, run over
  domains in sequence, with timing and availability under load (``twinloop eval``);
- :mod:`twinloop.showcase.experiments.report` — the Markdown report, tables shaped like the paper's §6.2;
- :mod:`twinloop.showcase.experiments.plots` — the report's PNG plots.
"""
