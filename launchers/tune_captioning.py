#!/usr/bin/env python
"""Tune MELTR for video captioning on Ray (UniVL on YouCook2 / MSRVTT feature shards), ranked by CIDEr.

UniVL is not registered in this release: until it lands this launcher says so and exits with code 2.

    ray submit --tmux cluster.yaml launchers/tune_captioning.py -- --address auto \\
        --data s3://BUCKET/youcook2_shards --pretrained /home/ubuntu/univl.pretrained.bin \\
        --storage s3://BUCKET/meltr_results
"""
import sys

from meltr_ray.launch import tune_main

if __name__ == "__main__":
    sys.exit(tune_main("captioning", description=__doc__.split("\n\n")[0], needs_data=True))
