"""The jobs — training (:mod:`.trainer`), evaluation (:mod:`.evaluator`), pseudo-label export
(:mod:`.pseudo_labels`), inference (:mod:`.inference`) — and what they share: builders from a
config, torchrun support, atomic writes, checkpoints, metrics, schedules and pictures."""
