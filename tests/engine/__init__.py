"""Shared settings of the engine tests: a tiny, fast TSCD run on synthetic data."""

TINY = [
    "data.batch_size=2", "data.synthetic.image_size=64", "data.synthetic.num_val=4", "data.synthetic.num_train=50",
    "model.backbone=mit_b0", "model.embedding_dim=16", "model.stride=[4,2,1,1]", "model.drop_path_rate=0.0",
    "cam.scales=[1.0]", "refine.num_iter=2", "loss.stage1_iters=2", "loss.scd_scale=0.5",
    "optim.warmup_iters=2", "train.max_iters=4", "train.eval_interval=100", "train.ckpt_interval=0",
    "train.backend=torch", "eval.batch_size=2", "eval.num_vis=2",
]
