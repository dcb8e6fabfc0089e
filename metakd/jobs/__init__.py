"""The commands' jobs: what ``metakd <command>`` does with files, run folders and tracking.

A job loads its config (a YAML file plus ``key=value`` overrides), reads its inputs, runs the
library (:mod:`metakd.detect`, :mod:`metakd.evaluate`, ...), writes its outputs and returns
what the command line prints. One module per command: :mod:`~metakd.jobs.tasks`,
:mod:`~metakd.jobs.adapt` (one domain), :mod:`~metakd.jobs.adapt_dir` (every domain of a
folder), :mod:`~metakd.jobs.score` and :mod:`~metakd.jobs.evaluate`; meta-training's is
:mod:`metakd.launch`. Jobs never import :mod:`metakd.cli`.
"""
