"""The jobs — training (:mod:`.trainer`), evaluation (:mod:`.evaluator`), pseudo-label export
(:mod:`.pseudo_labels`), inference (:mod:`.inference`) — and what they share: what a config builds
(:mod:`.builders`), where a job runs (:mod:`.runtime`: device, threads, backends), torchrun support,
atomic writes, checkpoints, metrics, schedules and pictures."""
