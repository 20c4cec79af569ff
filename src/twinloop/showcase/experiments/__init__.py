"""Experiments on the real system (issue 7): the continual-learning evaluation and its report.

- :mod:`twinloop.showcase.experiments.facts` — generated facts the base cannot know, with paraphrased probes;
- :mod:`twinloop.showcase.experiments.metrics` — the accuracy matrix and GEM metrics (ACC, BWT, forgetting);
- :mod:`twinloop.showcase.experiments.continual` — the experiment: methods as strategy objects, run over
  domains in sequence, with timing and availability under load (``twinloop eval``);
- :mod:`twinloop.showcase.experiments.report` — the Markdown report with PNG plots, tables shaped like
  the paper's §6.2.
"""
