"""Analysis of a study (arms x seeds of run directories): deltas, flags, plots and reports.

Modules, one job each: :mod:`~fedmtl.study.collect` reads the files, :mod:`~fedmtl.study.deltas`
holds the formulas, :mod:`~fedmtl.study.analysis` compares arms, :mod:`~fedmtl.study.plots` draws,
:mod:`~fedmtl.study.render` writes markdown/HTML, :mod:`~fedmtl.study.report` and
:mod:`~fedmtl.study.sweep` write the reports. Import from the submodules (plotting pulls in
matplotlib, so nothing is imported here eagerly).
"""
