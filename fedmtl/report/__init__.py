"""Analysis of a study (arms x seeds of run directories): deltas, flags, plots and reports.

Modules, one job each: :mod:`~fedmtl.report.collect` reads the files, :mod:`~fedmtl.report.deltas`
holds the formulas, :mod:`~fedmtl.report.analysis` compares arms, :mod:`~fedmtl.report.plots` draws,
:mod:`~fedmtl.report.render` writes markdown/HTML, :mod:`~fedmtl.report.report` and
:mod:`~fedmtl.report.sweep` write the reports. Import from the submodules (plotting pulls in
matplotlib, so nothing is imported here eagerly).
"""
