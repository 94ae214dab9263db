#!/usr/bin/env python
"""Tune MELTR for video question answering on Ray (Violet on TGIF-QA / MSVD-QA shards), ranked by accuracy.

Open-ended QA (MSVD-QA, TGIF-Frame) by default; --task qa_mc for TGIF-Action / TGIF-Transition.

    ray submit --tmux cluster.yaml launchers/tune_qa.py -- --address auto \\
        --data s3://BUCKET/msvd_qa_shards --vocab /home/ubuntu/meltr_ray/vocab.txt \\
        --pretrained /home/ubuntu/ckpt_violet_pretrain.pt --storage s3://BUCKET/meltr_results
"""
import sys

from meltr_ray.launch import tune_main

if __name__ == "__main__":
    sys.exit(tune_main("qa_oe", description=__doc__.split("\n\n")[0], needs_data=True))
