#!/usr/bin/env python
"""Tune MELTR for multimodal sentiment analysis on Ray (UniVL on CMU-MOSI feature shards), ranked by binary
accuracy.

UniVL is not registered in this release: until it lands this launcher says so and exits with code 2.

    ray submit --tmux cluster.yaml launchers/tune_sentiment.py -- --address auto \\
        --data s3://BUCKET/cmu_mosi_shards --pretrained /home/ubuntu/univl.pretrained.bin \\
        --storage s3://BUCKET/meltr_results
"""
import sys

from meltr_ray.launch import tune_main

if __name__ == "__main__":
    sys.exit(tune_main("sentiment", description=__doc__.split("\n\n")[0], needs_data=True))
