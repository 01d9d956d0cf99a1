"""A ``-m`` sweep as a study: planned before it starts, ordered against drift, paused between runs, resumable.

``plan`` expands the command's sweep into configurations (each validated, duplicates after
resolution found by ``identity``), ``order`` lays their cycles out in time, ``gate`` pauses
between runs, ``state`` keeps ``study.json`` in the sweep folder (what ran, where, how it ended)
so ``resume`` can continue it, ``execute`` runs it through Hydra's launcher, and ``pool`` gives
each configuration's cycle statistics when its cycles were spread across the study.
"""
