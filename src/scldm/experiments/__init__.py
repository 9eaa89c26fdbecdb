"""Experiments: commands that orchestrate several training and evaluation runs (the ablation)
and tabulate them, above `scldm.training` and `scldm.evaluation`. Each experiment's report
writers live in their own module beside it (`ablate` → `ablate_report`).
"""
