#!/usr/bin/env python
"""Tune MELTR for text-to-video retrieval on Ray (γ reg_weight, α backbone_lr, β meltr_lr, K neumann_steps,
meta_every), ranked by R@1 on the val split.

With no arguments: the embedded demo on a private local Ray (127.0.0.1) — synthetic mp4 clips → Parquet
shards → violet_tiny, a handful of HyperOpt trials with ASHA on CPU workers, a live table, then the best
setting.

On a cluster (runs on the head node; `--address auto` joins the cluster there):
    ray submit --tmux cluster.yaml launchers/tune_retrieval.py -- --address auto \\
        --data s3://BUCKET/msrvtt_shards --vocab /home/ubuntu/meltr_ray/vocab.txt \\
        --pretrained /home/ubuntu/ckpt_violet_pretrain.pt --storage s3://BUCKET/meltr_results --num-samples 16
Resume an interrupted search with `--restore s3://BUCKET/meltr_results/<name>`.
"""
import sys

from meltr_ray.launch import tune_main

if __name__ == "__main__":
    sys.exit(tune_main("retrieval", description=__doc__.split("\n\n")[0]))
