"""Experiments: commands that orchestrate several training and evaluation runs (the ablation,
the comparison with the baselines) and tabulate them, above `scldm.training` and
`scldm.evaluation`. Each experiment's report writers live in their own modules beside it
(`ablate` → `ablate_report`; `compare` → `compare_table`, `compare_report`), and `compare_runs`
trains the runs `compare --train` asks for.
"""
