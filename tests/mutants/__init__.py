"""The mutation suite: plausible library bugs, planted at run time, that the reproduction must
catch (a failed claim check). ``python -m tests.mutants`` runs it; see :mod:`.run`."""
