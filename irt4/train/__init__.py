"""Training of both stages (`irt4-train`): the loop, its schedule, EMA, checkpoints and data order."""
